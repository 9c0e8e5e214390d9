"""Round trips per document of detections-store's write path, in-process against the real
FerretDB and MinIO: `python -m bench.detections.roundtrips [documents] [history] [threads]`.

Inserts `documents` predictable documents (after `history` ready ones, as a kept history would
be) into a collection of its own, times the source's scan once, then writes every document with
functions.detections.writer from `threads` threads, as detections-store's threads would, and
prints MongoDB commands (pymongo command monitoring) and S3 requests (botocore events) per
document with the server time they took. Removes what it made.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymongo import monitoring

from bench.common import stack_env
from bench.detections.bench import PREDICTION, empty_bucket


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.micros: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.micros[event.command_name] += event.duration_micros

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.micros[event.command_name] += event.duration_micros

    def clear(self) -> None:
        self.count.clear()
        self.micros.clear()


def main(documents: int = 300, history: int = 0, threads: int = 8) -> None:
    commands = Commands()
    monitoring.register(commands)  # before the first client is made
    stack_env()
    from functions.detections import outbox, writer
    from functions.detections.events import PredictionPredictable
    from functions.runtime import clients
    from functions.sources.mongo_outbox import PROJECTION, WAITING_FILTER

    s3 = clients.s3.client()
    requests: Counter[str] = Counter()
    s3.meta.events.register("before-call.s3", lambda model, **_: requests.update([model.name]))
    tag = uuid.uuid4().hex[:6]
    collection = clients.mongodb.database()[f"bench_roundtrips_{tag}"]
    bucket = f"bench-roundtrips-{tag}"
    s3.create_bucket(Bucket=bucket)

    def document(n: int, status: str) -> dict[str, Any]:
        return {"event_id": f"rt-{tag}-{status}-{n}", "bucket": bucket, "status": status,
                "prediction": {**PREDICTION, "n": n}}  # fmt: skip

    try:
        if history:
            collection.insert_many([document(n, outbox.READY) for n in range(history)])
        ids = collection.insert_many(
            [document(n, outbox.PREDICTABLE) for n in range(documents)]
        ).inserted_ids
        outbox.Claims.of(collection).ensure_index()
        started = time.perf_counter()
        found = list(collection.find(WAITING_FILTER, PROJECTION))
        print(f"source scan: {len(found)} predictable of {documents + history} documents in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")  # fmt: skip
        commands.clear()
        requests.clear()

        def write(document_id: Any) -> str:
            ref = PredictionPredictable(
                collection=collection.name, document_id=outbox.reference(document_id)
            )
            return writer.write(ref, f"bench-roundtrips/{uuid.uuid4().hex}")

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            outcomes = Counter(pool.map(write, ids))
        elapsed = time.perf_counter() - started
        print(f"store: {documents} documents from {threads} threads in {elapsed:.1f} s = "
              f"{documents / elapsed:.1f}/s, outcomes {dict(outcomes)}")  # fmt: skip
        print("MongoDB commands per document:",
              {k: round(v / documents, 2) for k, v in commands.count.items()})  # fmt: skip
        print("MongoDB ms per document (all threads):",
              {k: round(v / 1000 / documents, 1) for k, v in commands.micros.items()})  # fmt: skip
        print("S3 requests per document:",
              {k: round(v / documents, 2) for k, v in requests.items()})  # fmt: skip
    finally:
        collection.drop()
        collection.database[f"{collection.name}{outbox.CLAIMS_SUFFIX}"].drop()
        empty_bucket(s3, bucket)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="MongoDB commands and S3 requests per document")
    parser.add_argument("documents", type=int, nargs="?", default=300, help="documents written")
    parser.add_argument("history", type=int, nargs="?", default=0, help="documents already there")
    parser.add_argument("threads", type=int, nargs="?", default=8, help="concurrent writers")
    args = parser.parse_args()
    main(args.documents, args.history, args.threads)
