"""ota-outbox-purge — daily: delete sent outbox rows older than OTA_OUTBOX_RETENTION_DAYS.

In chunks of OTA_OUTBOX_PURGE_CHUNK rows, each its own short transaction, so a large backlog
never holds a long lock or a long transaction (which would hold back the relay's xmin horizon).
Dead rows stay until someone re-drives or deletes them (docs/ota.md, recipes).
"""

from __future__ import annotations

from datetime import timedelta

from functions.ota import outbox
from functions.ota import settings as ota_settings
from functions.ota.events import OutboxPurged
from functions.runtime import clients
from functions.runtime.adapter import Event, Reply, cloudevent_function
from functions.sources.events import Ping

MAX_CHUNKS = 10_000  # bounds one run; the next day's run continues


def purge() -> int:
    cfg = ota_settings.outbox()
    older_than = timedelta(days=cfg.outbox_retention_days)
    deleted = 0
    for _ in range(MAX_CHUNKS):
        count = clients.postgres.transaction(
            lambda cur: outbox.purge(cur, older_than, cfg.outbox_purge_chunk)
        )
        deleted += count
        if count < cfg.outbox_purge_chunk:
            break
    return deleted


@cloudevent_function("ota-outbox-purge", accepts=["dev.knative.sources.ping"])
def ota_outbox_purge(event: Event[Ping]) -> Reply:
    return Reply("objectflow.ota.outbox.purged.v1", OutboxPurged(deleted=purge()))
