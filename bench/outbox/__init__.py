"""OTA outbox relay: outbox rows/s and p50/p99 commit-to-ack of ota-outbox-relay (NOTIFY, batches
of 500) vs the source document's worker (poll every second, batches of 10, a send and a flush per
row) vs raw kafka-python producer throughput with the same records (the limit), plus p99 at an
offered 1,000 jobs/s.

bench.py runs it in a PostgreSQL database and Kafka topics of its own (dropped at the end);
polling.py is the source document's worker.
"""

ORDER = 40
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "rows": (20000, "outbox rows committed at once for each drain measurement"),
    "rate": (1000.0, "jobs per second offered in the open-loop measurement"),
    "devices": (1000, "distinct devices (record keys) the rows are spread over"),
    "drain_s": (20.0, "how long the batch-of-10 worker may drain before it is stopped"),
    "writers": (4, "writer processes for the open-loop load"),
    "profile": (False, "run the relay under pyinstrument (bench/out/outbox-relay-profile.txt)"),
}
