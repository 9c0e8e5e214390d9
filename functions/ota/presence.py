"""Device presence from telemetry heartbeats (docs/ota.md, "Telemetry"): who is online, and
bounded writes of what the heartbeats say.

A device is *online* when `ota.devices.last_seen` is within OTA_ONLINE_WINDOW of now; rollouts
release only online devices (functions/ota/rollouts.py), the others wait, counted `offline`.

Heartbeats come far more often than the window needs (every 10 s against a 300 s window), so
they are coalesced per device: one is written only when it moves `last_seen` forward by more
than half the window, or reports another firmware, so `last_seen` lags the truth by at most
half the window and a device stays online while it keeps heartbeating. Two guards, the same
rule:

- Redis (the fast path, so most heartbeats send PostgreSQL nothing at all):

      ota:telemetry:<device_id>   hash {seen: epoch s of the last written heartbeat, firmware}
                                  EX OTA_ONLINE_WINDOW (past it, its `seen` decides nothing)

  GATE checks and sets it in one step (atomic: concurrent heartbeats of one device, from a
  redelivery or another replica, pass it once). A write that then fails deletes the key, so
  the redelivered heartbeat passes again. With Redis down every heartbeat goes to PostgreSQL.
- PostgreSQL: the UPDATE's own WHERE applies the rule again, so a heartbeat that passed the
  gate (an expired key, Redis down) still changes no row unless it is due.

Battery, signal and uptime are the latest written heartbeat's, not every heartbeat's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from functions.ota.dead_letters import Refused, first_error, record_object
from functions.ota.events import DeviceTelemetry

if TYPE_CHECKING:
    import redis as redis_lib
    from psycopg2.extensions import cursor as Cursor

log = logging.getLogger("objectflow.ota.presence")

# KEYS[1] ota:telemetry:<device_id>; ARGV: seen (epoch s), half window (s), firmware, ttl (s).
# Returns 1 when the heartbeat is due (and recorded as the device's latest write), else 0.
GATE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'seen'))
local firmware = redis.call('HGET', KEYS[1], 'firmware')
local now = tonumber(ARGV[1])
if seen and now < seen + tonumber(ARGV[2]) and (firmware == ARGV[3] or now < seen) then
  return 0
end
redis.call('HSET', KEYS[1], 'seen', ARGV[1], 'firmware', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# One statement: the device's row before, the coalesced write (only when due, the rule of the
# module docstring), and when the device comes back online with it, the running rollouts it
# waits in (to be stepped at once rather than at their next tick).
WRITE = """
WITH before AS (
    SELECT device_id, last_seen, reported_firmware FROM ota.devices WHERE device_id = %(id)s
), written AS (
    UPDATE ota.devices d SET last_seen = GREATEST(d.last_seen, %(seen)s),
        reported_firmware = %(firmware)s, battery = %(battery)s, signal = %(signal)s,
        uptime_s = %(uptime_s)s
    FROM before b
    WHERE d.device_id = b.device_id AND (
        b.last_seen IS NULL OR b.last_seen <= %(seen)s - %(half)s
        OR (b.reported_firmware IS DISTINCT FROM %(firmware)s AND %(seen)s >= b.last_seen))
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM written),
    ARRAY(SELECT DISTINCT rd.rollout_id::text FROM ota.rollout_devices rd
          JOIN ota.rollouts r ON r.id = rd.rollout_id
          WHERE rd.device_id = b.device_id AND rd.job_id IS NULL AND r.status = 'running'
            AND (b.last_seen IS NULL OR b.last_seen < %(online_since)s)
            AND EXISTS (SELECT 1 FROM written))
FROM before b
"""


@dataclass(frozen=True)
class Written:
    written: bool  # False: not due (PostgreSQL's guard), nothing changed
    rollouts: list[str]  # running rollouts the device waits in, when it just came online


def key(device_id: str) -> str:
    return f"ota:telemetry:{device_id}"


def online_since(now: datetime, window_s: float) -> datetime:
    """The oldest last_seen of an online device."""
    return now - timedelta(seconds=window_s)


def parse(value: Any, device_id: str | None, max_bytes: int) -> DeviceTelemetry:
    """The heartbeat a `device.telemetry` record carries (value: JSON, or bytes that were not)."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    if len(raw) > max_bytes:
        raise Refused("oversize", f"{len(raw)} bytes, over OTA_TELEMETRY_MAX_BYTES {max_bytes}")
    value = record_object(value, device_id, "telemetry")
    try:
        return DeviceTelemetry.model_validate(value)
    except ValidationError as exc:
        where, message = first_error(exc)
        raise Refused("invalid", f"{where}: {message}") from None


def seen_at(telemetry: DeviceTelemetry, received: datetime) -> datetime:
    """When the heartbeat shows the device alive: its own `ts`, but never later than it was
    received (a device clock running ahead must not keep it online)."""
    ts = telemetry.ts if telemetry.ts.tzinfo else telemetry.ts.replace(tzinfo=UTC)
    return min(ts, received)


def due(client: redis_lib.Redis, device_id: str, seen: datetime, firmware: str,
        window_s: float) -> bool:  # fmt: skip
    """The Redis gate (module docstring): True when the heartbeat is to be written. Raises
    the client's errors (the caller then asks PostgreSQL)."""
    answer = client.eval(GATE, 1, key(device_id), seen.timestamp(), window_s / 2, firmware,
                         max(1, int(window_s)))  # fmt: skip
    return bool(answer)


def forget(client: redis_lib.Redis, device_id: str) -> None:
    """Undo a passed gate whose write failed, so the redelivered heartbeat is written."""
    try:
        client.delete(key(device_id))
    except Exception as exc:  # the key expires within the window anyway
        log.warning("telemetry gate not reset", extra={"device_id": device_id, "error": repr(exc)})


def write(
    cur: Cursor, device_id: str, telemetry: DeviceTelemetry, seen: datetime, now: datetime,
    window_s: float,
) -> Written:  # fmt: skip
    """The coalesced write (one statement); raises Refused for a device never registered."""
    cur.execute(WRITE, {
        "id": device_id, "seen": seen, "half": timedelta(seconds=window_s / 2),
        "firmware": telemetry.firmware, "battery": telemetry.battery,
        "signal": telemetry.signal, "uptime_s": telemetry.uptime_s,
        "online_since": online_since(now, window_s),
    })  # fmt: skip
    row = cur.fetchone()
    if row is None:
        raise Refused("unknown-device", f"no device {device_id} (register it: PUT /devices/<id>)")
    return Written(bool(row[0]), list(row[1]))
