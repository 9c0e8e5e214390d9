"""Telemetry's pure parts: which heartbeats are refused, when one shows its device alive, and
that a wave waits for its offline devices."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from functions.ota import presence, waves
from functions.ota.dead_letters import Refused

GOOD = {"ts": "2026-01-01T00:00:00Z", "firmware": "1.2.0", "battery": 50, "signal": -70}


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"{not json", "d", "not-json"),
        (json.dumps(GOOD).encode(), None, "no-device"),
        ("just a string", "d", "invalid"),
        ({**GOOD, "battery": "50"}, "d", "invalid"),
        ({**GOOD, "uptime_s": 1.5}, "d", "invalid"),
        ({**GOOD, "firmware": 12}, "d", "invalid"),
        ({"firmware": "1.2.0"}, "d", "invalid"),
        ({**GOOD, "pad": "x" * 4096}, "d", "oversize"),
    ],
)
def test_bad_heartbeats_are_refused_with_their_reason(
    value: Any, key: str | None, reason: str
) -> None:
    with pytest.raises(Refused) as refused:
        presence.parse(value, key, max_bytes=4096)
    assert refused.value.reason == reason


def test_a_heartbeat_parses_from_bytes_or_a_decoded_value_and_ignores_unknown_fields() -> None:
    parsed = presence.parse(json.dumps({**GOOD, "temperature": 41}).encode(), "d", 4096)
    assert parsed == presence.parse(GOOD, "d", 4096)
    assert (parsed.firmware, parsed.battery, parsed.signal, parsed.uptime_s) == (
        "1.2.0", 50, -70, None)  # fmt: skip


def test_a_heartbeat_shows_its_device_alive_no_later_than_it_arrived() -> None:
    heartbeat = presence.parse(GOOD, "d", 4096)
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    assert presence.seen_at(heartbeat, sent + timedelta(seconds=3)) == sent
    assert presence.seen_at(heartbeat, sent - timedelta(hours=1)) == sent - timedelta(hours=1)


def test_a_wave_with_offline_devices_waits_for_them() -> None:
    waiting = waves.Tally(5, Counter({"done": 4, waves.OFFLINE: 1}))
    assert not waiting.all_finished and not waiting.passed(95)
    assert waves.decide(0, -1, [waiting, waves.Tally(5)], 95, 50, 1).kind == "release"
