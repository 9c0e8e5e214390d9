"""The detections step of `objectflow demo`: predictions through the running runtime's outbox.

Inserts a few predictions into MongoDB `runner_predictions` (status `predictable`) as a runner
would, waits for each to become `ready` (mongo-outbox -> broker -> detections-store), reads its
object back from MinIO and compares it with the canonical JSON of the prediction. One bad
document shows a rejection: it stays `predictable` with the reason in `outbox_error`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import boto3
import pymongo
from rich.console import Console
from rich.table import Table

from functions.detections.outbox import canonical_json

ORDER = 30  # after camera
COLLECTION = "runner_predictions"
TIMEOUT = 30.0


def run(env: dict[str, str], console: Console) -> bool:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        env["MONGODB_URI"], serverSelectionTimeoutMS=5000, tz_aware=True
    )
    collection = client.get_default_database()[COLLECTION]
    s3 = boto3.client(
        "s3", endpoint_url=env["MINIO_ENDPOINT"], aws_access_key_id=env["MINIO_ROOT_USER"],
        aws_secret_access_key=env["MINIO_ROOT_PASSWORD"], region_name="us-east-1",
    )  # fmt: skip
    bucket = env.get("MINIO_DETECTIONS_BUCKET", "detections")
    tag = uuid.uuid4().hex[:8]
    documents = [
        {"event_id": f"demo-{tag}-{n}", "bucket": bucket, "status": "predictable",
         "prediction": {"frame": n, "boxes": [{"label": "person", "score": 0.97, "xyxy": [4, 8]}]}}
        for n in range(3)
    ]  # fmt: skip
    bad = {"event_id": f"demo-{tag}/../escape", "bucket": bucket, "status": "predictable",
           "prediction": {"frame": 99}}  # fmt: skip
    with client:
        started = time.monotonic()
        collection.insert_many([*documents, bad])
        console.print(f"inserted {len(documents) + 1} documents into {COLLECTION} (tag {tag})")
        ids = [d["_id"] for d in [*documents, bad]]

        def settled() -> list[dict[str, Any]]:
            found = list(collection.find({"_id": {"$in": ids}}))
            done = [d for d in found if d["status"] == "ready" or "outbox_error" in d]
            return found if len(done) == len(ids) else []

        found: list[dict[str, Any]] = []
        while not found and time.monotonic() - started < TIMEOUT:
            found = settled()
            time.sleep(0.1)
        if not found:
            console.print(
                f"[red]not every document settled within {TIMEOUT:.0f}s: "
                "is the runtime up (make up)?[/]"
            )
            return False
        table = Table(title=f"detections: documents after {time.monotonic() - started:.1f}s")
        for column in ("event_id", "status", "output_s3 / outbox_error", "object"):
            table.add_column(column)
        ok = True
        by_id = {d["_id"]: d for d in found}
        for document in documents:
            after = by_id[document["_id"]]
            body = s3.get_object(Bucket=bucket, Key=f"detection/{document['event_id']}.json")[
                "Body"
            ].read()
            same = body == canonical_json(document["prediction"])
            ok &= after["status"] == "ready" and same
            table.add_row(document["event_id"], after["status"], after.get("output_s3", ""),
                          f"{len(body)} bytes, {'equal' if same else 'DIFFERENT'}")  # fmt: skip
        rejected = by_id[bad["_id"]]
        ok &= rejected["status"] == "predictable" and "outbox_error" in rejected
        table.add_row(bad["event_id"], rejected["status"], rejected.get("outbox_error", ""), "none")
        console.print(table)
        collection.delete_many({"_id": bad["_id"]})  # the good ones stay, as history
    return ok
