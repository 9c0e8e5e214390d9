"""Create what the functions expect inside each service: databases, topics, buckets, collections.

Every step is idempotent (create if missing) and retried for a while, because a port that accepts
connections does not mean the service is ready (Kafka elects its controller, MinIO initialises).
Client libraries are imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenacity import retry, stop_after_delay, wait_fixed

from devstack.config import HOST, Stack

retried = retry(stop=stop_after_delay(60), wait=wait_fixed(0.5), reraise=True)


@retried
def postgres(stack: Stack, sockets: Path) -> None:
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
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [stack.db_name])
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stack.db_name)))
    finally:
        conn.close()


@retried
def kafka(stack: Stack) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=stack.url("kafka"), client_id="objectflow-devstack")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name, partitions in stack.topics.items()
            if name not in existing
        ]
        if missing:
            admin.create_topics(missing)
    finally:
        admin.close()


@retried
def minio(stack: Stack) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.url("minio"),
        aws_access_key_id=stack.admin_user,
        aws_secret_access_key=stack.admin_password,
        region_name="us-east-1",
    )
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in set(stack.buckets.values()) - existing:
        s3.create_bucket(Bucket=bucket)


@retried
def ferretdb(stack: Stack) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        HOST, stack.ports["ferretdb"], serverSelectionTimeoutMS=5000
    )
    with client:
        db = client[stack.mongo_db]
        for name in set(stack.mongo_collections) - set(db.list_collection_names()):
            db.create_collection(name)
