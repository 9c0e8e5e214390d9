"""Prometheus counters of the detections outbox (kept out of the function modules, which
functions-framework may execute more than once per process)."""

from __future__ import annotations

from prometheus_client import Counter

STORED = Counter(
    "objectflow_detections_store_total",
    "Predictable events handled by detections-store, by outcome (uploaded, identical: the same "
    "object was there, overwritten, rejected, busy: claimed by another worker, done: already "
    "ready, gone: no such document, lost-claim: taken over after the lease).",
    ["outcome"],
)
RECONCILED = Counter(
    "objectflow_detections_reconcile_total",
    "Documents examined by detections-reconcile, by outcome (stuck, rejected, checked, "
    "reopened, error).",
    ["outcome"],
)
