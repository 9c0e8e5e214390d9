"""Prometheus counters of the camera pipeline (the watcher's "events, reconcile hits, failures").

Kept out of the function modules: functions-framework executes a function's source file
afresh for every app it creates, and a counter must be registered only once per process.
"""

from __future__ import annotations

from prometheus_client import Counter

CHUNKS = Counter(
    "objectflow_camera_chunks_total",
    "Camera chunks received, by outcome (stored, duplicate, late: capture already processed).",
    ["outcome"],
)
CAPTURES = Counter(
    "objectflow_camera_captures_total",
    "Captures finished (uploaded, recorded, marked processed), by the function that did it.",
    ["by"],
)
QUARANTINED = Counter(
    "objectflow_camera_quarantined_total",
    "Captures whose assembled JPEG/PNG did not decode, stored under the quarantine prefix.",
)
WATCHED = Counter(
    "objectflow_camera_watch_total",
    "Object notifications handled by camera-watch, by outcome "
    "(published, duplicate, quarantined: under the quarantine prefix, never announced).",
    ["outcome"],
)
RECONCILED = Counter(
    "objectflow_camera_reconcile_total",
    "Stuck image objects examined by camera-reconcile, by outcome "
    "(republished, failed, skipped: moved on meanwhile, error: a dependency failed).",
    ["outcome"],
)
SWEPT = Counter(
    "objectflow_camera_sweep_total",
    "Captures handled by camera-sweep, by outcome (completed, expired, forgotten, error).",
    ["outcome"],
)
