"""Bench subscribers, served by functions-framework; declared in bench/values-bench.yaml.

`sink` records (event id, sent, received) for each POST in this process's memory, as cheaply
as possible so a benchmark measures the hop and not the function; `GET /samples` returns them
(`?clear=1` empties the list). `hello` is the bare functions-framework hello-world that cold
start is compared with. Deliberately no objectflow imports: this is the baseline.
"""

from __future__ import annotations

import json
import time

import flask
import functions_framework

_samples: list[tuple[str, float, float]] = []  # gunicorn runs 1 worker: one list per function


@functions_framework.http
def sink(request: flask.Request) -> flask.Response | str:
    received = time.time()
    if request.method == "POST":
        sent = json.loads(request.get_data())["sent"]
        _samples.append((request.headers.get("ce-id", ""), sent, received))  # atomic (GIL)
        return flask.Response(status=204)
    if request.path == "/samples":
        body = json.dumps(_samples)
        if request.args.get("clear"):
            _samples.clear()
        return flask.Response(body, mimetype="application/json")
    return "ok"  # GET /health and anything else


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "ok"
