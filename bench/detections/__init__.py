"""Detections outbox: documents/s from predictable to ready and insert-to-ready latency of the
pipeline (mongo-outbox -> broker -> detections-store) vs a direct single-process polling worker,
with MinIO's small-PUT rate as the limit.

bench.py runs it; direct.py is the direct worker (source document 004's design).
"""

ORDER = 30
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "rate": (100.0, "documents inserted per second (open loop)"),
    "backlog": (500, "documents inserted at once for the drain rate"),
}
