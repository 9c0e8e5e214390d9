"""Camera ingestion: chunks/s, images/s and last-chunk-to-row latency of the camera pipeline vs
a direct single-process MQTT consumer, under the same open-loop load.

bench.py runs it; direct.py is the direct consumer.
"""

ORDER = 20
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "cameras": (100, "simulated cameras"),
    "chunks": (16, "chunks per capture"),
    "chunk_bytes": (2048, "bytes per chunk"),
    "period": (2.0, "seconds between a camera's captures"),
}
