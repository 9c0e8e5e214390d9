"""Create what the functions expect inside each service: databases, topics, buckets, collections.

Topics, buckets and collections are exactly what values.yaml's `domains` declare (plus the topics
its Kafka sources read): `wiring.Values.infrastructure()`.

Every step is idempotent (create if missing) and retried for a while, because a port that accepts
connections does not mean the service is ready (Kafka elects its controller, MinIO initialises).
Client libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenacity import retry, stop_after_delay, wait_fixed

from devstack.config import HOST, MINIO_WEBHOOK_ARN, Stack
from devstack.wiring import Infrastructure

retried = retry(stop=stop_after_delay(60), wait=wait_fixed(0.5), reraise=True)


@retried
def postgres(stack: Stack, sockets: Path, databases: tuple[str, ...]) -> None:
    """Set the role's password and create the `databases` that do not exist yet."""
    import psycopg2
    from psycopg2 import sql

    # Over the local socket (trusted), so this works whatever password the role had before.
    conn = psycopg2.connect(
        host=str(sockets), port=stack.ports["postgres"], user=stack.db_user, dbname="postgres"
    )
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(stack.db_user)),
                [stack.db_password],
            )
            for database in databases:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        conn.close()


@retried
def kafka(stack: Stack, topics: dict[str, int]) -> None:
    """Create the `topics` (name -> partitions) that do not exist yet."""
    from kafka.admin import KafkaAdminClient, NewTopic

    if not topics:
        return
    wanted = topics
    admin = KafkaAdminClient(bootstrap_servers=stack.url("kafka"), client_id="objectflow-devstack")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if missing:
            admin.create_topics(missing)
    finally:
        admin.close()


@retried
def minio(stack: Stack, infrastructure: Infrastructure) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.url("minio"),
        aws_access_key_id=stack.admin_user,
        aws_secret_access_key=stack.admin_password,
        region_name="us-east-1",
    )
    notify = minio_notifications()
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    wanted = set(infrastructure.bucket_names) | set(notify)
    for bucket in wanted - existing:
        s3.create_bucket(Bucket=bucket)
    # The whole configuration is replaced, so a bucket dropped from values.yaml stops notifying.
    for bucket in sorted(wanted):
        queues = (
            [{"QueueArn": MINIO_WEBHOOK_ARN, "Events": notify[bucket]}] if bucket in notify else []
        )
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": queues}
        )


def minio_notifications() -> dict[str, list[str]]:
    """Bucket -> S3 event names to notify the webhook adapter of (values.yaml sources.minio)."""
    from devstack import wiring

    return {b.bucket: list(b.events) for b in wiring.default().sources.minio.buckets}


@retried
def ferretdb(stack: Stack, collections: tuple[str, ...]) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        HOST, stack.ports["ferretdb"], serverSelectionTimeoutMS=5000
    )
    with client:
        db = client[stack.mongo_db]
        for name in set(collections) - set(db.list_collection_names()):
            db.create_collection(name)
