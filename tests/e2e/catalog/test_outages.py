"""Outages of the real services during the image service's work (each stopped and started
again within the test): MinIO during an upload and during a delete, PostgreSQL during an
upload, Redis throughout. Nothing is lost and nothing is left over."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from devstack import wiring
from devstack.runtime import ticker
from functions.runtime.adapter import REPLY_NAMESPACE
from tests.catalog_support import jpeg, objects, png, redis_client, sql, state
from tests.e2e.catalog.conftest import new_id
from tests.support import E2E_OVERLAY, start_stack, stop_service, wait_for

Deliveries = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def product(stack_env: dict[str, str], api_url: str) -> str:
    product_id = new_id()
    sql(stack_env, "INSERT INTO catalog.products (product_id) VALUES (%s)", product_id)
    return product_id


@pytest.fixture
def outage() -> Iterator[Callable[[str], None]]:
    """`outage("minio")` stops the service; it is started again however the test ends."""
    stopped: list[str] = []

    def stop(name: str) -> None:
        stopped.append(name)
        stop_service(name)

    yield stop
    if stopped:
        start_stack()


def upload(api_url: str, product: str, data: bytes, kind: str = "image/jpeg") -> Any:
    return requests.post(
        f"{api_url}/products/{product}/images",
        data=data,
        timeout=60,
        headers={"content-type": kind},
    )


def retry_deletes(deliveries: Deliveries) -> dict[str, Any]:
    """`objectflow tick catalog-retry-deletes`, and the counts it replied (the reply's id is
    derived from the tick's, functions.runtime.adapter)."""
    tick = ticker.fire_by_hand("catalog-retry-deletes", [E2E_OVERLAY])
    reply = "objectflow.catalog.deletes-retried.v1"
    reply_id = str(uuid.uuid5(REPLY_NAMESPACE, f"{tick['source']}\x00{tick['id']}\x00{reply}"))
    found = wait_for(
        lambda: deliveries("e2e-sources", reply_id), timeout=60, what="the deletes-retried reply"
    )
    return dict(found[0]["data"])


def test_minio_down_during_an_upload(
    api_url: str, stack_env: dict[str, str], product: str, outage: Callable[[str], None]
) -> None:
    before = state(stack_env, product)
    outage("minio")
    answer = upload(api_url, product, jpeg())
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("retry-after") and answer.json()["dependency"] == "s3"
    start_stack()
    assert state(stack_env, product) == before


def test_minio_down_during_a_delete(
    api_url: str,
    stack_env: dict[str, str],
    product: str,
    outage: Callable[[str], None],
    deliveries: Deliveries,
) -> None:
    stored = upload(api_url, product, png(), "image/png").json()
    outage("minio")
    gone = requests.delete(f"{api_url}/images/{stored['image_id']}", timeout=30)
    assert gone.status_code == 202
    store = redis_client(stack_env)
    wait_for(
        lambda: store.sismember("failed_deletes", stored["key"]),
        timeout=60,
        what="the key in failed_deletes",
    )
    start_stack()
    assert state(stack_env, product)["objects"] == [stored["key"]]  # still there
    counts = retry_deletes(deliveries)
    assert counts["retried"] >= 1 and counts["deleted"] >= 1 and counts["still_failing"] == 0
    assert state(stack_env, product)["objects"] == []
    assert store.scard("failed_deletes") == 0


def test_postgres_down_during_an_upload(
    api_url: str,
    stack_env: dict[str, str],
    product: str,
    outage: Callable[[str], None],
    deliveries: Deliveries,
) -> None:
    before = state(stack_env, product)
    outage("postgres")
    answer = upload(api_url, product, jpeg(seed=4))
    assert answer.status_code >= 500 and answer.json()["error"]
    start_stack()
    retry_deletes(deliveries)
    assert state(stack_env, product) == before  # no row, no orphan object


def test_orphans_are_swept_by_the_schedule(
    api_url: str, stack_env: dict[str, str], product: str, deliveries: Deliveries
) -> None:
    """What an upload whose commit failed leaves behind: an object without a row."""
    from tests.support import s3_client

    orphan = f"products/{product}/{new_id()}.jpg"
    s3_client(stack_env).put_object(Bucket="product-images", Key=orphan, Body=jpeg())
    wait_for(
        lambda: (
            retry_deletes(deliveries)["orphans_removed"] >= 1
            and orphan not in state(stack_env, product)["objects"]
        ),
        timeout=60,
        interval=1.0,
        what="the orphan swept",
    )


def test_redis_down(
    api_url: str,
    stack_env: dict[str, str],
    product: str,
    outage: Callable[[str], None],
    values: wiring.Values,
) -> None:
    kept = upload(api_url, product, jpeg(seed=8)).json()
    assert requests.get(f"{api_url}/products/{product}/images", timeout=10).status_code == 200
    outage("redis")
    stored = upload(api_url, product, png(seed=9), "image/png")
    assert stored.status_code == 201, stored.text
    for _ in range(2):
        listed = requests.get(f"{api_url}/products/{product}/images", timeout=30)
        assert listed.status_code == 200 and listed.json()["cached"] is False
        assert len(listed.json()["images"]) == 2
    gone = requests.delete(f"{api_url}/images/{kept['image_id']}", timeout=30)
    assert gone.status_code == 202 and gone.json()["object_deletion"] == "broker"
    wait_for(
        lambda: kept["key"] not in objects(stack_env, product),
        timeout=60,
        what="the object deleted without Redis",
    )
    start_stack()
    first = requests.get(f"{api_url}/products/{product}/images", timeout=10).json()
    second = requests.get(f"{api_url}/products/{product}/images", timeout=10).json()
    assert [i["image_id"] for i in first["images"]] == [stored.json()["image_id"]]
    assert (first["cached"], second["cached"]) == (False, True)
