"""Prometheus counters of the image service (kept out of the function modules, which
functions-framework may execute more than once per process)."""

from __future__ import annotations

from prometheus_client import Counter

UPLOADS = Counter(
    "objectflow_catalog_uploads_total",
    "Image uploads, by outcome (stored, rejected: bad file or unknown product, failed).",
    ["outcome"],
)
DELETES = Counter(
    "objectflow_catalog_object_deletes_total",
    "Object deletions, by outcome (deleted, failed: the key went to failed_deletes, "
    "orphan: left to catalog-retry-deletes' sweep).",
    ["outcome"],
)
LINKS = Counter(
    "objectflow_catalog_links_total", "Link lists served, by cache (hit, miss).", ["cache"]
)
RETRIED = Counter(
    "objectflow_catalog_deletes_retried_total",
    "What catalog-retry-deletes did, by count (retried, deleted, still_failing, orphans_removed).",
    ["count"],
)
