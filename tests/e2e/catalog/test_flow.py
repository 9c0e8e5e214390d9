"""The image service through the running runtime: Product Service's Kafka records, catalog-api,
the broker, catalog-image-delete, with every assertion on the real services."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from devstack import wiring
from tests.catalog_support import BAD_FILES, jpeg, png, sha256, sql, state
from tests.e2e.catalog.conftest import handled, new_id, product_row
from tests.support import wait_for

MiB = 1024 * 1024


def created(env: dict[str, str], publish: Callable[..., Any], product: str) -> None:
    publish("product.created", {"productId": product}, key=product)
    wait_for(lambda: product_row(env, product), timeout=60, what=f"product {product} recorded")


def test_product_lifecycle(
    api_url: str,
    stack_env: dict[str, str],
    product_service: Callable[..., Any],
    values: wiring.Values,
) -> None:
    product = new_id()
    created(stack_env, product_service, product)
    photo, drawing = jpeg(400, 300, seed=11), png(120, 90, seed=12)
    one = requests.post(
        f"{api_url}/products/{product}/images",
        timeout=30,
        files={"file": ("photo.jpg", photo, "image/jpeg")},
    )
    two = requests.post(
        f"{api_url}/products/{product}/images",
        data=drawing,
        timeout=30,
        headers={"content-type": "image/png"},
    )
    assert (one.status_code, two.status_code) == (201, 201), (one.text, two.text)
    assert one.json()["sha256"] == sha256(photo) and two.json()["content_type"] == "image/png"

    first = requests.get(f"{api_url}/products/{product}/images", timeout=10).json()
    second = requests.get(f"{api_url}/products/{product}/images", timeout=10).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert len(second["images"]) == 2
    for link, data in zip(second["images"], (photo, drawing), strict=True):
        assert requests.get(link["url"], timeout=10).content == data

    key = one.json()["key"]
    gone = requests.delete(f"{api_url}/images/{one.json()['image_id']}", timeout=10)
    assert gone.status_code == 202 and gone.json()["object_deletion"] == "broker"
    wait_for(lambda: key not in state(stack_env, product)["objects"], what="object deleted")

    product_service("product.deleted", {"productId": product}, key=product)
    wait_for(lambda: state(stack_env, product)["objects"] == [], timeout=60, what="objects gone")
    after = wait_for(
        lambda: (s := state(stack_env, product))["images"] == [] and s, what="rows gone"
    )
    assert after["product"][0][1] is not None and after["links"] is None

    seen = handled(values)
    product_service("product.created", {"productId": product}, key=product)  # a replay
    wait_for(lambda: handled(values) > seen, timeout=60, what="the replay handled")
    assert state(stack_env, product) == after  # still a tombstone
    late = requests.post(
        f"{api_url}/products/{product}/images",
        data=jpeg(),
        timeout=10,
        headers={"content-type": "image/jpeg"},
    )
    assert late.status_code == 404


@pytest.mark.parametrize("name", [*sorted(BAD_FILES), "oversized"])
def test_bad_uploads_write_nothing(api_url: str, stack_env: dict[str, str], name: str) -> None:
    product = new_id()
    sql(stack_env, "INSERT INTO catalog.products (product_id) VALUES (%s)", product)
    before = state(stack_env, product)
    if name == "oversized":
        data, status = b"\xff\xd8\xff" + b"\0" * (5 * MiB - 2), 413
    else:
        data, status, _kind = BAD_FILES[name]
    answer = requests.post(
        f"{api_url}/products/{product}/images",
        timeout=30,
        files={"file": ("photo.jpg", data, "image/jpeg")},
    )
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == "file"
    assert state(stack_env, product) == before


def test_malformed_kafka_record_is_dead_lettered(
    stack_env: dict[str, str], product_service: Callable[..., Any]
) -> None:
    meta = product_service("product.created", {"productId": "not-a-uuid"})
    event_id = f"partition:{meta.partition}/offset:{meta.offset}"
    letter = wait_for(
        lambda: sql(
            stack_env,
            "SELECT status_code, response_body FROM objectflow.dead_letters "
            "WHERE event_id = %s AND event_source LIKE %s",
            event_id,
            "%/catalog-product-created#product.created",
        ),
        timeout=60,
        what="the record dead-lettered",
    )
    status, body = letter[0]
    assert status == 422 and json.loads(body)["field"] == "data.productId"
    assert (
        sql(stack_env, "SELECT 1 FROM catalog.products WHERE product_id::text = 'not-a-uuid'") == []
    )


def test_parallel_uploads_and_a_product_delete_leave_no_orphans(
    api_url: str, stack_env: dict[str, str], product_service: Callable[..., Any]
) -> None:
    product = new_id()
    created(stack_env, product_service, product)

    def upload(n: int) -> int:
        answer = requests.post(
            f"{api_url}/products/{product}/images",
            timeout=60,
            data=jpeg(200, 200, seed=n),
            headers={"content-type": "image/jpeg"},
        )
        return answer.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(upload, n) for n in range(20)]
        product_service("product.deleted", {"productId": product}, key=product)
        statuses = [f.result() for f in futures]
    assert set(statuses) <= {201, 404}, statuses
    settled = wait_for(
        lambda: (
            (s := state(stack_env, product))["images"] == []
            and s["objects"] == []
            and s["product"][0][1] is not None
            and s
        ),
        timeout=60,
        what="every image and object of the deleted product gone",
    )
    assert settled["failed"] == []
