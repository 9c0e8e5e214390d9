"""Camera ingestion: chunks/s, images/s and last-chunk-to-row latency of the camera pipeline, the
pipeline without the broker (direct sink) and a direct single-process MQTT consumer, under the
same open-loop loads, beside what each service sustains alone (the limit).

bench.py runs it; direct.py is the direct consumer; limits.py measures the services alone.
"""

ORDER = 20
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "cameras": ("10,30,100", "simulated cameras of each load, comma-separated"),
    "chunks": (16, "chunks per capture"),
    "chunk_bytes": (2048, "bytes per chunk"),
    "period": (2.0, "seconds between a camera's captures"),
    "limit_seconds": (3.0, "seconds each service is measured alone"),
}
