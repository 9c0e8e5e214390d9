"""catalog-image-delete — deletes one image's object (objectflow.catalog.image.deleted.v1).

On a storage failure the key goes to Redis `failed_deletes` and the event is acknowledged
(source document 003: the daily retry owns it from then). Deleting an object that is already
gone succeeds, so redeliveries are harmless.
"""

from __future__ import annotations

from functions.catalog import events, service
from functions.runtime.adapter import Event, cloudevent_function

assert events  # its types must be registered before the decorator checks `accepts`


@cloudevent_function("catalog-image-delete", accepts=["objectflow.catalog.image.deleted.v1"])
def catalog_image_delete(event: Event[events.ImageDeleted]) -> None:
    service.delete_object(event.data.key)
