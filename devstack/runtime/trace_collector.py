"""The local stack's trace collector: an OTLP/HTTP receiver that keeps every span it is sent.

With `local.tracing.enabled`, the runtime starts it and points every process at it
(`OTEL_EXPORTER_OTLP_ENDPOINT`); `objectflow traces` prints what it kept. In a cluster the chart
points the functions at a real collector instead (`tracing.otlpEndpoint`).

Spans are appended, one JSON object a line, to .devstack/data/traces/spans.jsonl (past 64 MiB
it becomes spans.jsonl.1, replacing the one before):
`{"trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "end_ns",
"status", "attributes"}` (ids in hex, as in a traceparent).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from devstack.config import HOST, PATHS

SPANS = PATHS.data("traces") / "spans.jsonl"
MAX_BYTES = 64 * 1024 * 1024  # then the file becomes spans.jsonl.1 (the one before is dropped)
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
log = logging.getLogger("objectflow.traces")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return None if kind is None else getattr(value, kind)


def decode(body: bytes) -> Iterator[dict[str, Any]]:
    """The spans of one OTLP/HTTP protobuf export request, as the JSON lines above."""
    request = ExportTraceServiceRequest.FromString(body)
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_id": span.parent_span_id.hex() or None,
                    "name": span.name,
                    "kind": KINDS.get(span.kind, str(span.kind)),
                    "service": resource.get("service.name"),
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "status": {0: "unset", 1: "ok", 2: "error"}.get(span.status.code, "unset"),
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                }


class Receiver(BaseHTTPRequestHandler):
    lock = threading.Lock()

    def do_POST(self) -> None:
        if self.path != "/v1/traces":
            self.send_error(404, "only POST /v1/traces (OTLP/HTTP protobuf)")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            lines = [json.dumps(span) + "\n" for span in decode(body)]
        except Exception as exc:  # a malformed export: the sender's bug, reported to it
            self.send_error(400, f"not an OTLP protobuf export: {exc}")
            return
        with self.lock:
            if SPANS.exists() and SPANS.stat().st_size > MAX_BYTES:
                SPANS.replace(SPANS.with_suffix(".jsonl.1"))
            with SPANS.open("a") as out:
                out.writelines(lines)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        if self.path in ("/health", "/healthz"):
            body = json.dumps({"status": "ok", "function": "trace-collector",
                               "pid": os.getpid()}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404, "POST /v1/traces; GET /health")

    def log_message(self, *_args: Any) -> None:  # one line a request would drown the log
        pass


def spans(path: Path = SPANS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def by_trace(found: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in found:
        traces[span["trace_id"]].append(span)
    return traces


def tree(trace: list[dict[str, Any]]) -> list[str]:
    """One trace's spans as indented lines, children under their parent, in start order."""
    ids = {s["span_id"] for s in trace}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in sorted(trace, key=lambda s: s["start_ns"]):
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children[parent].append(span)
    start = min((s["start_ns"] for s in trace), default=0)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children[parent]:
            offset = (span["start_ns"] - start) / 1e6
            took = (span["end_ns"] - span["start_ns"]) / 1e6
            flag = "  ERROR" if span["status"] == "error" else ""
            lines.append(f"{'  ' * depth}{span['service']}: {span['name']} "
                         f"(+{offset:.1f} ms, {took:.1f} ms, {span['kind']}){flag}")  # fmt: skip
            walk(span["span_id"], depth + 1)

    walk(None, 0)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.runtime.trace_collector")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    SPANS.parent.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((HOST, args.port), Receiver)
    log.info("trace collector on http://%s:%s/v1/traces, spans in %s", HOST, args.port, SPANS)
    server.serve_forever()


if __name__ == "__main__":
    main()
