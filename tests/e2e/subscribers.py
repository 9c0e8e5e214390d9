"""Test subscribers for the e2e tier, declared in values-e2e.yaml (never in the product diagram).

`recorder` records every delivery it gets in Redis (`e2e:deliveries:<function>`), and behaves as
the event's data asks, so a test can script a subscriber's answers:
- `{"fail": [503, 503]}`: answer those statuses on the first attempts, then 200;
- `{"broken": true}`: answer 400 while Redis key `e2e:broken:<event id>` exists ("fixed" = deleted);
- `{"reply": "<type>"}`: answer with a reply CloudEvent of that type;
- `{"hold": "<key>"}`: a slow subscriber: wait (up to 2 s) while Redis key `<key>` exists;
- `{"loop": "<root id>", "hop": n}`: reply with the same type and `hop` n + 1 (a reply loop; it
  stops by itself at hop 400, should the broker's TTL guard not);
- `{"answer-body": "<text>"}`: answer 200 with that text as the body (not a CloudEvent);
- `{"failure-body-bytes": n}`: scripted failures carry an n-byte body.
"""

from __future__ import annotations

import json
import os
import time

import flask
import functions_framework
import redis
from cloudevents.http import CloudEvent

from functions.runtime import cehttp

_store = redis.Redis(
    host=os.environ.get("REDIS_HOST", "127.0.0.1"), port=int(os.environ.get("REDIS_PORT", "6379"))
)
CORE_ATTRIBUTES = {"id", "type", "source", "subject", "specversion", "time", "datacontenttype"}


@functions_framework.http
def recorder(request: flask.Request) -> flask.Response:
    if request.method == "GET":  # /health, with the pid the local runtime checks
        return flask.Response(json.dumps({"pid": os.getpid()}), mimetype="application/json")
    name = os.environ["K_SERVICE"]
    event = cehttp.decode(dict(request.headers), request.get_data())
    data = event.get_data() if isinstance(event.get_data(), dict) else {}
    held_until = time.monotonic() + 2
    while data.get("hold") and _store.exists(data["hold"]) and time.monotonic() < held_until:
        time.sleep(0.05)
    attempt = _store.incr(f"e2e:attempts:{name}:{event['id']}")
    attributes = event.get_attributes()
    delivery = {
        "id": event["id"], "type": event["type"], "source": event["source"],
        "subject": event.get("subject"), "time": event.get("time"),
        "attempt": attempt, "at": time.time(), "pid": os.getpid(),
        "data": event.get_data() if not isinstance(event.get_data(), bytes) else None,
        "body": request.get_data().decode(errors="replace")[:4096],  # as it came on the wire
        "datacontenttype": event.get("datacontenttype"),
        "extensions": {k: v for k, v in attributes.items() if k not in CORE_ATTRIBUTES},
    }  # fmt: skip
    _store.rpush(f"e2e:deliveries:{name}", json.dumps(delivery, default=str))
    failures = data.get("fail", [])
    if attempt <= len(failures):
        detail = "x" * data["failure-body-bytes"] if data.get("failure-body-bytes") else ""
        body = detail or f"scripted failure {attempt}"
        return flask.Response(body, status=failures[attempt - 1])
    if "answer-body" in data:
        return flask.Response(data["answer-body"], status=200, mimetype="text/plain")
    if data.get("loop") and data.get("hop", 0) < 400:
        hop = data["hop"] + 1
        looped = CloudEvent(
            {"type": event["type"], "source": f"/e2e/{name}", "id": f"{data['loop']}-{hop}"},
            {"loop": data["loop"], "hop": hop},
        )
        headers, body = cehttp.encode(looped)
        return flask.Response(body, status=200, headers=headers)
    if data.get("broken") and _store.exists(f"e2e:broken:{event['id']}"):
        return flask.Response('{"error": "still broken"}', status=400, mimetype="application/json")
    if data.get("reply"):
        reply = CloudEvent(
            {"type": data["reply"], "source": f"/e2e/{name}", "id": f"reply-{event['id']}"},
            {"in_reply_to": event["id"]},
        )
        headers, body = cehttp.encode(reply)
        return flask.Response(body, status=200, headers=headers)
    return flask.Response(status=204)
