"""Prometheus counters of OTA's functions (kept out of the function modules, which
functions-framework may execute more than once per process). The relay's own metrics live in
functions/ota/relay.py, a process of its own."""

from __future__ import annotations

from prometheus_client import Counter

DEADLINES = Counter(
    "objectflow_ota_deadlines_total",
    "Silent jobs ota-deadlines expired, by outcome (redispatched, timed_out: out of retries).",
    ["outcome"],
)
STATUS_DEAD_LETTERS = Counter(
    "objectflow_ota_status_dead_letters_total",
    "Device statuses ota-status refused and Kafka acknowledged on device.status.dlq, by reason.",
    ["reason"],
)
ROLLOUT_PAUSES = Counter(
    "objectflow_ota_rollout_pauses_total",
    "Rollouts paused, by who paused them (abort: the abort rule; threshold: a wave finished "
    "below its success_threshold; operator: POST /rollouts/<id>/pause).",
    ["by"],
)
for _by in ("abort", "threshold", "operator"):  # each series from 0, so increase() sees a first
    ROLLOUT_PAUSES.labels(_by)
TELEMETRY = Counter(
    "objectflow_ota_telemetry_total",
    "Heartbeats ota-telemetry handled, by outcome (coalesced: absorbed by the Redis gate, no "
    "statement; written; unchanged: PostgreSQL's guard; online: written, a waiting rollout "
    "stepped).",
    ["outcome"],
)
TELEMETRY_DEAD_LETTERS = Counter(
    "objectflow_ota_telemetry_dead_letters_total",
    "Heartbeats ota-telemetry refused and Kafka acknowledged on device.telemetry.dlq, by reason.",
    ["reason"],
)
