"""What detections tests look at and run: an outbox collection of their own in FerretDB, a
bucket of their own in MinIO (versioned, so every PUT is counted), and real processes (the
mongo-outbox source, detections-store under functions-framework)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pymongo
import requests

from devstack.process import free_port
from functions.detections.outbox import canonical_json
from tests.support import s3_client, wait_for

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "functions" / "detections" / "store.py"


class Outbox:
    """A fresh collection (`collection` given: that one, e.g. the runtime's runner_predictions,
    touching only this outbox's own documents) and a fresh versioned bucket."""

    def __init__(self, env: dict[str, str], collection: str | None = None) -> None:
        self.env = env
        self.tag = uuid.uuid4().hex[:8]
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            env["MONGODB_URI"], serverSelectionTimeoutMS=5000, tz_aware=True
        )
        self.db = self.client.get_default_database()
        self.own_collection = collection is None
        self.collection = self.db[collection or f"test_predictions_{self.tag}"]
        self.s3 = s3_client(env)
        self.bucket = f"test-detections-{self.tag}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self.ids: list[Any] = []

    def document(self, n: int, **fields: Any) -> dict[str, Any]:
        return {
            "event_id": f"ev-{self.tag}-{n}",
            "bucket": self.bucket,
            "status": "predictable",
            "prediction": {"n": n, "boxes": [{"label": "человек", "score": 0.9}], "z": None},
            "runner": {"model": "yolo", "seq": n},
            **fields,
        }

    def insert(self, documents: list[dict[str, Any]]) -> list[Any]:
        ids = self.collection.insert_many(documents).inserted_ids
        self.ids += ids
        return list(ids)

    def mine(self, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.collection.find({"_id": {"$in": self.ids}, **(query or {})}))

    def ready(self) -> int:
        return self.collection.count_documents({"_id": {"$in": self.ids}, "status": "ready"})

    def wait_ready(self, count: int, timeout: float = 60) -> None:
        wait_for(lambda: self.ready() >= count, timeout=timeout, what=f"{count} documents ready")

    def object(self, event_id: str) -> tuple[bytes, dict[str, Any]]:
        found = self.s3.get_object(Bucket=self.bucket, Key=f"detection/{event_id}.json")
        return found["Body"].read(), found

    def versions(self) -> dict[str, int]:
        """PUTs per key (object versions of the versioned bucket)."""
        counts: dict[str, int] = {}
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
            for version in page.get("Versions", []):
                counts[version["Key"]] = counts.get(version["Key"], 0) + 1
        return counts

    def assert_written(self, documents: list[dict[str, Any]]) -> None:
        """Each document ready once, its object byte-equal to the canonical JSON of its
        prediction and written once, and every field it had before unchanged."""
        found = {d["event_id"]: d for d in self.mine()}
        versions = self.versions()
        for before in documents:
            after = found[before["event_id"]]
            key = f"detection/{before['event_id']}.json"
            assert after["status"] == "ready", after
            assert after["output_s3"] == f"s3://{self.bucket}/{key}"
            assert after["ready_at"] is not None
            body, head = self.object(before["event_id"])
            assert body == canonical_json(before["prediction"])
            assert head["ContentType"] == "application/json"
            assert versions[key] == 1, (key, versions[key])
            unchanged = {
                k: v for k, v in after.items() if k not in ("status", "output_s3", "ready_at")
            }
            assert unchanged == {k: v for k, v in before.items() if k != "status"}

    def close(self) -> None:
        if self.own_collection:
            self.collection.drop()
        else:
            self.collection.delete_many({"_id": {"$in": self.ids}})
        if self.own_collection:
            self.db[f"{self.collection.name}_claims"].drop()
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                self.s3.delete_object(
                    Bucket=self.bucket, Key=version["Key"], VersionId=version["VersionId"]
                )
        self.s3.delete_bucket(Bucket=self.bucket)
        self.client.close()


class Process:
    """A real process of ours (a source or a functions-framework worker), logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log = name, command, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, env={**os.environ, **self.env}, cwd=ROOT, stdout=out, stderr=out
            )
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)


def source(env: dict[str, str], collection: str, sink: str, log: Path, **extra: str) -> Process:
    settings = {
        **env, "K_SINK": sink, "OBJECTFLOW_OUTBOX_COLLECTION": collection,
        "OBJECTFLOW_METRICS_PORT": str(free_port()), **extra,
    }  # fmt: skip
    command = [sys.executable, "-m", "functions.sources.mongo_outbox"]
    return Process("mongo-outbox", command, settings, log).start()


class Worker(Process):
    """detections-store (or a stand-in target module) under functions-framework on a free port."""

    def __init__(
        self, env: dict[str, str], log: Path, source: Path = STORE, port: int = 0, **extra: str
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [
            sys.executable, "-m", "functions_framework", "--source", str(source),
            "--target", "detections_store", "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        super().__init__("detections-store", command, {**env, **extra}, log)

    def start(self) -> Worker:
        super().start()
        wait_for(self.healthy, timeout=30, what=f"{self.name} on {self.url}")
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}health", timeout=1).ok
        except requests.RequestException:
            return False


def metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples at `url` (every label set)."""
    text = requests.get(url, timeout=15).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )
