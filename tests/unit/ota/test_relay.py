"""The relay's pure parts: a cycle's queues keep a device's order, outages are told from bad
records, job.dlq records carry the error, the id and a bounded payload."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError

from functions.ota.outbox import Row
from functions.ota.relay import Queues, dlq_record, headers, is_outage


def row(n: int, device: str, payload: dict[str, object] | None = None) -> Row:
    return Row(
        n,
        str(uuid.uuid4()),
        f"job-{n}",
        device,
        "job.created",
        payload or {"n": n},
        0,
        datetime.now(UTC),
    )


def ids(rows: list[Row | None]) -> list[int | None]:
    return [None if r is None else r.id for r in rows]


def test_a_device_has_one_row_in_flight_and_the_next_goes_when_it_is_acked() -> None:
    q = Queues()
    a1, b2, a3, c4, a5, b6 = (row(1, "a"), row(2, "b"), row(3, "a"), row(4, "c"), row(5, "a"),
                              row(6, "b"))  # fmt: skip
    assert ids(q.add([a1, b2, a3, c4])) == [1, 2, 4]
    assert ids(q.add([a5, b6])) == []  # a later read: queued behind a1 and b2
    assert ids([q.acked(b2), q.acked(a1), q.acked(c4)]) == [6, 3, None]
    assert not q.idle
    assert ids([q.acked(a3), q.acked(b6), q.acked(a5)]) == [5, None, None]
    assert q.idle and q.seen == [1, 2, 3, 4, 5, 6]


def test_a_refused_row_drops_its_devices_later_rows_from_the_cycle() -> None:
    q = Queues()
    a1, a2, b3 = row(1, "a"), row(2, "a"), row(3, "b")
    assert ids(q.add([a1, a2, b3])) == [1, 3]
    q.refused(a1)  # a2 must not overtake it: it waits for the next cycle, behind a1's retry
    assert q.failed == {"a"} and ids([q.acked(b3)]) == [None]
    assert q.idle


def test_connection_trouble_is_an_outage_and_a_bad_record_is_not() -> None:
    assert is_outage(KafkaTimeoutError())
    assert is_outage(NotLeaderForPartitionError())
    assert not is_outage(MessageSizeTooLargeError("2000000 bytes"))


def test_a_dlq_record_names_the_event_and_truncates_the_payload() -> None:
    poison = row(7, "d", {"blob": "x" * 10_000})
    body = json.loads(dlq_record(poison, "MessageSizeTooLargeError: too big", keep_bytes=100))
    assert body["event_id"] == poison.event_id and body["outbox_id"] == 7
    assert body["error"].startswith("MessageSizeTooLargeError")
    assert body["payload_truncated"] is True and len(body["payload"]) == 100
    assert body["payload_bytes"] == len(poison.value())


def test_headers_follow_the_cloudevents_kafka_binding() -> None:
    found = dict(headers(row(1, "dev-9"), "/objectflow/ota"))
    assert found["ce_specversion"] == b"1.0"
    assert found["ce_type"] == b"objectflow.ota.job.created.v1"
    assert found["ce_subject"] == b"job-1" and found["ce_partitionkey"] == b"dev-9"
    assert found["content-type"] == b"application/json"
