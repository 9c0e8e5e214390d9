"""ota-telemetry in-process against the real PostgreSQL, Redis and Kafka: heartbeats coalesced
per device (the statements that reach PostgreSQL counted, 5,000 devices), every refusal in
device.telemetry.dlq with nothing written, outages answered 503 with nothing lost, and a
rollout releasing a device the moment its first heartbeat arrives."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient

from functions.ota import presence, rollouts, telemetry
from functions.runtime import clients, migrate, settings
from tests.integration.ota.test_status import ensure_topics
from tests.ota_support import JobEvents, sql, unique
from tests.support import scaled

ROOT = Path(__file__).resolve().parents[3]
SOURCE = "/apis/v1/namespaces/objectflow/kafkasources/ota-device-telemetry#device.telemetry"
WINDOW = 300.0  # OTA_ONLINE_WINDOW's default
TOPICS = {"device.telemetry": 6, "device.telemetry.dlq": 1}
ROW = "last_seen, reported_firmware, battery, signal, uptime_s"


@pytest.fixture
def telemetry_app(ota_env: dict[str, str]) -> Iterator[FlaskClient]:
    migrate.apply()
    ensure_topics(ota_env, TOPICS)
    source = str(ROOT / "functions" / "ota" / "telemetry.py")
    yield functions_framework.create_app("ota_telemetry", source, "http").test_client()
    clients.reset()


@pytest.fixture
def dlq(ota_env: dict[str, str], telemetry_app: FlaskClient) -> Iterator[JobEvents]:
    reader = JobEvents(ota_env, topic="device.telemetry.dlq")
    yield reader
    reader.close()


def beat(ts: datetime | None = None, firmware: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"ts": (ts or datetime.now(UTC)).isoformat(), "firmware": firmware, **extra}


def post(app: FlaskClient, device_id: str | None, value: Any) -> int:
    """Deliver one device.telemetry record as the Kafka source does; the HTTP status."""
    attributes = {"type": "dev.knative.kafka.event", "source": SOURCE,
                  "id": f"partition:0/offset:{uuid.uuid4().int % 10**12}"}  # fmt: skip
    if device_id is not None:
        attributes["key"] = attributes["partitionkey"] = device_id
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    headers, body = to_binary(CloudEvent(attributes, data))
    if not isinstance(value, bytes):
        headers["content-type"] = "application/json"
    return app.post("/", headers=headers, data=body).status_code


def row(env: dict[str, str], device_id: str) -> tuple[Any, ...]:
    return sql(env, f"SELECT {ROW} FROM ota.devices WHERE device_id = %s", (device_id,))[0]


class CountingCursor:
    """The transaction's cursor, counting every statement it sends."""

    def __init__(self, cur: Any, counter: list[int]) -> None:
        self._cur, self._counter = cur, counter

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._counter[0] += 1
        return self._cur.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        self._counter[0] += 1
        return self._cur.executemany(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[n]: the statements ota-telemetry (and what it calls) sent PostgreSQL so far."""
    counter = [0]
    real = clients.postgres.transaction

    def counted(fn: Callable[[Any], Any], **kwargs: Any) -> Any:
        return real(lambda cur: fn(CountingCursor(cur, counter)), **kwargs)

    monkeypatch.setattr(clients.postgres, "transaction", counted)
    return counter


def test_a_heartbeat_is_written_then_coalesced_until_half_the_window_passed(
    telemetry_app: FlaskClient, device: Callable[..., str], api: Any, ota_env: dict[str, str],
    statements: list[int],
) -> None:  # fmt: skip
    device_id = device()
    assert api.get(f"/devices/{device_id}").json()["online"] is False
    statements[0] = 0  # ota-api's own
    t0 = datetime.now(UTC) - timedelta(seconds=200)
    assert post(telemetry_app, device_id, beat(t0, battery=81.5, signal=-67, uptime_s=42)) == 204
    assert row(ota_env, device_id) == (t0, "1.0.0", 81.5, -67.0, 42)
    assert statements[0] == 1
    # every 10 s: absorbed by Redis, no statement at all, until half the window has passed
    for n in range(1, 15):
        assert post(telemetry_app, device_id, beat(t0 + timedelta(seconds=10 * n))) == 204
    assert statements[0] == 1 and row(ota_env, device_id)[0] == t0
    later = t0 + timedelta(seconds=WINDOW / 2)
    assert post(telemetry_app, device_id, beat(later, battery=80)) == 204
    assert statements[0] == 2 and row(ota_env, device_id)[:3] == (
        later,
        "1.0.0",
        80,
    )
    # a new firmware is written at once; an older heartbeat never moves anything back
    flashed = later + timedelta(seconds=5)
    assert post(telemetry_app, device_id, beat(flashed, firmware="1.1.0")) == 204
    assert row(ota_env, device_id)[:2] == (flashed, "1.1.0")
    assert post(telemetry_app, device_id, beat(t0, firmware="0.9.0")) == 204
    assert row(ota_env, device_id)[:2] == (flashed, "1.1.0")
    shown = api.get(f"/devices/{device_id}").json()
    assert shown["online"] is True and shown["reported_firmware"] == "1.1.0"
    assert shown["last_seen"] is not None and shown["battery"] is None  # the latest written one


def test_a_device_clock_ahead_counts_as_seen_when_received(
    telemetry_app: FlaskClient, device: Callable[..., str], ota_env: dict[str, str]
) -> None:
    device_id = device()
    before = datetime.now(UTC)
    assert post(telemetry_app, device_id, beat(before + timedelta(days=1))) == 204
    assert before <= row(ota_env, device_id)[0] <= datetime.now(UTC)


def test_without_redis_every_heartbeat_asks_postgresql_which_still_writes_only_due_ones(
    telemetry_app: FlaskClient, device: Callable[..., str], ota_env: dict[str, str],
    statements: list[int],
) -> None:  # fmt: skip
    device_id = device()
    statements[0] = 0  # ota-api's own
    os.environ["REDIS_PORT"] = "1"  # nothing listens there: Redis is down for this process
    settings.reset()
    clients.reset()
    try:
        t0 = datetime.now(UTC) - timedelta(seconds=60)
        for n in range(3):
            assert post(telemetry_app, device_id, beat(t0 + timedelta(seconds=10 * n))) == 204
    finally:
        os.environ["REDIS_PORT"] = ota_env["REDIS_PORT"]
        settings.reset()
        clients.reset()
    assert statements[0] == 3 and row(ota_env, device_id)[0] == t0  # written once


def test_a_postgresql_outage_is_a_503_and_the_redelivery_is_written(
    telemetry_app: FlaskClient, device: Callable[..., str], ota_env: dict[str, str]
) -> None:
    device_id = device()
    ts = datetime.now(UTC)
    os.environ["DATABASE_URL"] = ota_env["DATABASE_URL"].replace(":5432/", ":1/")
    settings.reset()
    clients.reset()
    try:
        assert post(telemetry_app, device_id, beat(ts)) == 503
    finally:
        os.environ["DATABASE_URL"] = ota_env["DATABASE_URL"]
        settings.reset()
        clients.reset()
    assert row(ota_env, device_id)[0] is None
    assert not clients.redis.client().exists(presence.key(device_id))  # the gate was reset
    assert post(telemetry_app, device_id, beat(ts)) == 204  # the source's redelivery
    assert row(ota_env, device_id)[0] == ts


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"\xff not json", "known", "not-json"),
        (json.dumps(beat()).encode(), None, "no-device"),
        ([beat()], "known", "invalid"),
        ({"firmware": "1.0.0"}, "known", "invalid"),
        (beat(battery="full"), "known", "invalid"),
        (beat(signal=True), "known", "invalid"),
        (beat(battery=140), "known", "invalid"),
        (beat(uptime_s=-1), "known", "invalid"),
        ({**beat(), "ts": "yesterday"}, "known", "invalid"),
        (beat(firmware=""), "known", "invalid"),
        (beat(), "unknown", "unknown-device"),
        (beat(note="x" * 5000), "known", "oversize"),
    ],
)
def test_bad_telemetry_is_dead_lettered_with_its_reason_and_writes_nothing(
    telemetry_app: FlaskClient, dlq: JobEvents, device: Callable[..., str],
    ota_env: dict[str, str], value: Any, key: str | None, reason: str,
) -> None:  # fmt: skip
    known = device()
    device_id = {"known": known, "unknown": unique("nodev"), None: None}[key]
    assert post(telemetry_app, device_id, value) == 204  # dead-lettered, acknowledged
    letters = [r for r in dlq.poll() if r.key == (device_id or "")]
    assert [r.headers["reason"] for r in letters] == [reason]
    assert letters[0].value["reason"] == reason and letters[0].value["device_id"] == device_id
    assert row(ota_env, known) == (None, None, None, None, None)
    assert not clients.redis.client().exists(presence.key(device_id or known))
    if key == "unknown":
        assert sql(ota_env, "SELECT 1 FROM ota.devices WHERE device_id = %s", (device_id,)) == []


@pytest.mark.chaos
def test_a_fleet_heartbeating_costs_one_statement_each_per_half_window(
    ota_env: dict[str, str], statements: list[int]
) -> None:
    """5,000 devices (1,000 in `make test`) heartbeating every 10 s: the first heartbeat of
    each is one UPDATE, the next (10 s later) none; and over a simulated 10 minutes (a fifth
    of them, 61 heartbeats each) at most one write per device per OTA_ONLINE_WINDOW/2."""
    migrate.apply()
    run = uuid.uuid4().hex[:8]
    ids = [f"tele-{run}-{n:05d}" for n in range(scaled(1000, 5000))]
    sql(ota_env, "INSERT INTO ota.devices (device_id, model, timezone) "
        "SELECT unnest(%s::text[]), 'bench', 'UTC'", (ids,))  # fmt: skip
    t0 = datetime.now(UTC) - timedelta(minutes=20)
    first: dict[str, int] = {}
    for second in (0, 10):
        for device_id in ids:
            at = t0 + timedelta(seconds=second)
            outcome = telemetry.handle(beat(at), device_id, now=at + timedelta(milliseconds=50))
            first[outcome] = first.get(outcome, 0) + 1
    # 5,000 written, the 5,000 heartbeats after them absorbed by Redis; a Redis call that timed
    # out on the busy machine asks PostgreSQL instead, which writes nothing (`unchanged`)
    assert first["written"] == len(ids) and first["coalesced"] >= len(ids) * 0.99
    assert statements[0] == len(ids) + first.get("unchanged", 0)
    seen = sql(ota_env, "SELECT count(*) FROM ota.devices WHERE device_id = ANY(%s) "
               "AND last_seen = %s", (ids, t0))  # fmt: skip
    assert seen == [(len(ids),)]

    statements[0] = 0
    fleet, minutes = ids[: len(ids) // 5], 10
    outcomes: dict[str, int] = {}
    for tick in range(2, minutes * 6 + 1):  # on from t0 + 20 s to t0 + 10 min, every 10 s
        at = t0 + timedelta(seconds=10 * tick)
        for device_id in fleet:
            outcome = telemetry.handle(beat(at), device_id, now=at)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    heartbeats = sum(outcomes.values())
    bound = len(fleet) * (minutes * 60 / (WINDOW / 2))  # one per device per half window
    print(f"\n{heartbeats} heartbeats of {len(fleet)} devices over {minutes} min: "
          f"{statements[0]} statements (bound {bound:.0f}), {outcomes}")  # fmt: skip
    assert outcomes["written"] == len(fleet) * 4 <= bound  # at t0 + 150, 300, 450 and 600 s
    assert statements[0] == outcomes["written"] + outcomes.get("unchanged", 0)
    assert outcomes.get("unchanged", 0) <= heartbeats * 0.01


class Rollback(Exception):
    """Ends the scenario's transaction without committing it."""


def test_a_rollout_releases_online_devices_and_an_offline_one_on_its_first_heartbeat(
    telemetry_app: FlaskClient, firmware: str, device: Callable[..., str],
    ota_env: dict[str, str],
) -> None:  # fmt: skip
    """In one transaction rolled back at the end, so the running runtime's ota-rollouts (which
    may run other code) never sees this rollout."""
    online, silent, stale = [device() for _ in range(3)], device(), device()
    for device_id in online:
        assert post(telemetry_app, device_id, beat()) == 204
    sql(
        ota_env,
        "UPDATE ota.devices SET last_seen = now() - interval '301 seconds' WHERE device_id = %s",
        (stale,),
    )  # fmt: skip: seen, but too long ago
    spec = rollouts.Spec(firmware, [*online, silent, stale], None, [100], 95,
                         {"failure_percent": 50, "min_finished": 1}, None, None, None)  # fmt: skip
    seen: dict[str, Any] = {}

    def scenario(cur: Any) -> None:
        now = datetime.now(UTC)
        rid = rollouts.create(cur, spec)["id"]

        def released() -> set[str]:
            cur.execute("SELECT device_id FROM ota.rollout_devices WHERE rollout_id = %s "
                        "AND job_id IS NOT NULL", (rid,))  # fmt: skip
            return {r[0] for r in cur.fetchall()}

        seen["first"] = (rollouts.step(cur, rid, now, 100), released(), rollouts.get(cur, rid))
        heartbeat = presence.parse(beat(), silent, 4096)
        seen["written"] = presence.write(cur, silent, heartbeat, now, now, WINDOW)
        seen["nudged"] = rid
        seen["then"] = (rollouts.step(cur, rid, now, 100), released(), rollouts.get(cur, rid))
        raise Rollback

    with pytest.raises(Rollback):
        clients.postgres.transaction(scenario)
    outcome, released, shown = seen["first"]
    assert outcome == "released" and released == set(online)
    assert shown["counts"]["offline"] == 2 and shown["waves"][0]["counts"]["offline"] == 2
    assert shown["counts"]["pending"] == 0 and shown["counts"]["scheduled"] == 3
    # its first heartbeat names the rollout it waits in: ota-telemetry steps it at once
    assert seen["written"] == presence.Written(True, [seen["nudged"]])
    outcome, released, shown = seen["then"]
    assert outcome == "released" and released == {*online, silent}
    assert shown["counts"]["offline"] == 1  # the stale one still waits


def test_a_heartbeat_of_a_device_no_rollout_waits_for_steps_nothing(
    telemetry_app: FlaskClient, device: Callable[..., str], ota_env: dict[str, str]
) -> None:
    device_id = device()
    assert telemetry.handle(beat(), device_id) == "written"
    assert telemetry.handle(beat(), device_id) == "coalesced"
