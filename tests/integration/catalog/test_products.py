"""catalog-products, catalog-image-delete and catalog-retry-deletes as functions-framework
serves them, fed the CloudEvents their sources send, against the real services."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from tests.catalog_support import jpeg, png, redis_client, state

ROOT = Path(__file__).resolve().parents[3]
SOURCE = "/apis/v1/namespaces/objectflow/kafkasources/catalog-product-{}#product.{}"


def function(name: str, target: str) -> Any:
    source = str(ROOT / "functions" / "catalog" / f"{name}.py")
    return functions_framework.create_app(target, source, "http").test_client()


@pytest.fixture
def products(catalog_env: dict[str, str]) -> Any:
    return function("products", "catalog_products")


def record(topic: str, value: Any, key: str | None = None) -> tuple[dict[str, str], bytes]:
    """What the Kafka source posts for one record (devstack/runtime/kafka_source.py)."""
    attributes = {
        "type": "dev.knative.kafka.event",
        "source": SOURCE.format(topic, topic),
        "id": f"partition:0/offset:{uuid.uuid4().int % 10**9}",
        "datacontenttype": "application/json",
    }
    if key is not None:
        attributes["key"] = attributes["partitionkey"] = key
    headers, body = to_binary(CloudEvent(attributes, value))
    return dict(headers), body


def send(client: Any, topic: str, value: Any, key: str | None = None) -> Any:
    headers, body = record(topic, value, key)
    return client.post("/", headers=headers, data=body)


def test_created_then_deleted_then_replayed(
    products: Any, api: Any, catalog_env: dict[str, str]
) -> None:
    product = str(uuid.uuid4())
    assert send(products, "created", {"productId": product}, key=product).status_code == 204
    assert send(products, "created", {"productId": product}).status_code == 204  # replay
    keys = [
        api.post(
            f"/products/{product}/images", content=data, headers={"content-type": kind}
        ).json()["key"]
        for data, kind in ((jpeg(seed=5), "image/jpeg"), (png(seed=6), "image/png"))
    ]
    api.get(f"/products/{product}/images")  # cache the links
    assert state(catalog_env, product)["objects"] == sorted(keys)

    assert send(products, "deleted", product).status_code == 204  # a bare JSON string
    after = state(catalog_env, product)
    assert after["images"] == [] and after["objects"] == [] and after["links"] is None
    assert after["product"][0][1] is not None  # tombstone
    assert send(products, "deleted", {"id": product}).status_code == 204
    assert send(products, "created", {"productId": product}).status_code == 204
    assert state(catalog_env, product) == after  # the replayed created does not resurrect it
    assert (
        api.post(
            f"/products/{product}/images", content=jpeg(), headers={"content-type": "image/jpeg"}
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("value", "key", "field"),
    [
        ({"productId": "not-a-uuid"}, None, "data.productId"),
        ({"name": "chair"}, None, "data.productId"),
        ([1, 2, 3], None, "data"),
        (42, None, "data"),
        ({"productId": str(uuid.UUID(int=1)), "id": str(uuid.UUID(int=2))}, None, "data.id"),
        ({"productId": str(uuid.UUID(int=3))}, str(uuid.UUID(int=4)), "key"),
    ],
)
def test_malformed_records_are_422(
    products: Any, catalog_env: dict[str, str], value: Any, key: str | None, field: str
) -> None:
    named = [str(uuid.UUID(int=n)) for n in (1, 2, 3, 4)]
    before = [state(catalog_env, p) for p in named]
    answer = send(products, "created", value, key)
    assert answer.status_code == 422, answer.text
    assert answer.get_json()["field"] == field
    assert [state(catalog_env, p) for p in named] == before


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_a_record_value_that_is_not_json_is_422(
    products: Any, catalog_env: dict[str, str], content_type: str | None
) -> None:
    attributes = {
        "type": "dev.knative.kafka.event",
        "source": SOURCE.format("created", "created"),
        "id": f"partition:0/offset:{uuid.uuid4().int % 10**9}",
    }
    if content_type:
        attributes["datacontenttype"] = content_type
    headers, body = to_binary(CloudEvent(attributes, b"{not json " + uuid.uuid4().bytes))
    answer = products.post("/", headers=dict(headers), data=body)
    assert answer.status_code == 422, answer.text
    assert answer.get_json()["field"] == "data"


def test_records_of_other_topics_are_refused(products: Any) -> None:
    headers, body = record("created", {"productId": str(uuid.uuid4())})
    headers["ce-source"] = "/apis/v1/namespaces/objectflow/kafkasources/other#orders"
    assert products.post("/", headers=headers, data=body).status_code == 422


def test_image_delete_and_retry_replies(api: Any, catalog_env: dict[str, str]) -> None:
    deleter = function("image_delete", "catalog_image_delete")
    retry = function("retry_deletes", "catalog_retry_deletes")
    product = str(uuid.uuid4())
    send(function("products", "catalog_products"), "created", product)
    stored = api.post(
        f"/products/{product}/images", content=jpeg(), headers={"content-type": "image/jpeg"}
    ).json()
    data = {
        "image_id": stored["image_id"],
        "product_id": product,
        "bucket": "product-images",
        "key": stored["key"],
    }
    event = CloudEvent(
        {"type": "objectflow.catalog.image.deleted.v1", "source": "/test", "id": str(uuid.uuid4())},
        data,
    )
    headers, body = to_binary(event)
    assert deleter.post("/", headers=dict(headers), data=body).status_code == 204
    assert state(catalog_env, product)["objects"] == []

    redis_client(catalog_env).sadd("failed_deletes", f"products/{product}/{uuid.uuid4()}.jpg")
    ping = CloudEvent(
        {
            "type": "dev.knative.sources.ping",
            "id": str(uuid.uuid4()),
            "source": "/apis/v1/namespaces/objectflow/pingsources/catalog-retry-deletes",
        },
        {},
    )
    headers, body = to_binary(ping)
    answer = retry.post("/", headers=dict(headers), data=body)
    assert answer.status_code == 200
    assert answer.headers["ce-type"] == "objectflow.catalog.deletes-retried.v1"
    counts = json.loads(answer.data)
    assert counts["retried"] >= 1 and counts["deleted"] >= 1
    assert state(catalog_env, product)["failed"] == []
