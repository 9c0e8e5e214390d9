"""A MinIO notification body -> minio-webhook's CloudEvents -> HTTP -> the watching function's
checks: the webhook answers every body with its events or a 400 (the sender controls the body,
so no body may end in a 5xx), and every event it forwards is one the functions accept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import event as note
from hypothesis import given
from hypothesis import strategies as st

from functions.sources import minio_webhook
from tests.fuzz.wire import Rejected, delivered, json_values, payloads

# Keys as MinIO URL-encodes them (space as `+`), and any text.
keys = st.sampled_from(["cam-1/a+b%20c.jpg", "%", "%zz", "+", "cam/ü.jpg"]) | st.text(min_size=1)
names = st.sampled_from(["s3:ObjectCreated:Put", "s3:ObjectCreated:CompleteMultipartUpload",
                         "s3:ObjectRemoved:Delete", "s3:ObjectAccessed:Get"])  # fmt: skip
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=zones).map(
    datetime.isoformat
)
buckets = st.sampled_from(["thermo-raw", "product-images", "a.b-c"]) | st.text(
    min_size=1, max_size=20
)
metadata = st.dictionaries(
    st.sampled_from(["X-Amz-Meta-Device-Uid", "X-Amz-Meta-Traceparent", "content-type"])
    | st.text(max_size=20),
    st.text(max_size=60),
    max_size=3,
)
# What a record's fields may be replaced by: anything, or text where a number or a map belongs.
anything = json_values | st.text(max_size=20)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A record as MinIO sends it, with up to two of its fields replaced by anything."""
    obj: dict[str, Any] = {"key": draw(keys), "eTag": draw(st.text(max_size=40)),
                           "sequencer": draw(st.text(max_size=20)),
                           "userMetadata": draw(metadata)}  # fmt: skip
    if draw(st.booleans()):
        obj["size"] = draw(st.integers(0, 10**12))
    if draw(st.booleans()):
        obj["versionId"] = draw(st.text(max_size=40))
    bucket = {"name": draw(buckets)}
    record = {"eventName": draw(names), "eventTime": draw(times),
              "s3": {"bucket": bucket, "object": obj}}  # fmt: skip
    places = [(record, "eventName"), (record, "eventTime"), (record, "s3"), (bucket, "name"),
              *((obj, field) for field in [*obj, "size", "contentType"])]  # fmt: skip
    for where, field in draw(st.lists(st.sampled_from(places), max_size=2)):
        where[field] = draw(anything)
    return record


notifications = st.fixed_dictionaries({"Records": st.lists(records(), max_size=3)})


@given(body=payloads(notifications))
def test_a_body_is_its_events_or_a_400_and_every_event_is_accepted(body: bytes) -> None:
    try:
        events, skipped = minio_webhook.to_cloudevents(body)
    except minio_webhook.BadNotification as bad:
        assert bad.status == 400 and bad.detail
        note("400")
        return
    note(f"{len(events)} events, {skipped} skipped")
    records_in = json.loads(body)["Records"]
    assert len(events) + skipped == len(records_in)
    for event in events:
        outcome = delivered(event, [event["type"]])
        assert not isinstance(outcome, Rejected), outcome
        assert outcome.subject == f"{outcome.data.bucket}/{outcome.data.key}"
