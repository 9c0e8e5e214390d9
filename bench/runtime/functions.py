"""Bench subscribers, served by functions-framework; declared in bench/values-bench.yaml.

`sink` records (event id, sent, received) for each POST in this process's memory, as cheaply
as possible so a benchmark measures the hop and not the function; `GET /samples` returns them
(`?clear=1` empties the list). The runtime serves `kind: http` functions as ASGI apps
(functions-framework --asgi), so `sink` is an async starlette handler. `hello` is the bare
(Flask) functions-framework hello-world that cold start is compared with. Deliberately no
objectflow imports: this is the baseline.
"""

from __future__ import annotations

import json
import os
import time

import flask
import functions_framework
import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

_samples: list[tuple[str, float, float]] = []  # one worker: one list per function


@functions_framework.aio.http
async def sink(request: Request) -> Response | str:
    received = time.time()
    if request.method == "POST":
        sent = json.loads(await request.body())["sent"]
        _samples.append((request.headers.get("ce-id", ""), sent, received))
        return Response(status_code=204)
    if request.url.path == "/samples":
        body = json.dumps(_samples)
        if request.query_params.get("clear"):
            _samples.clear()
        return Response(body, media_type="application/json")
    return Response(json.dumps({"pid": os.getpid()}))  # GET /health (the runtime checks pid)


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "ok"
