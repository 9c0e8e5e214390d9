"""`objectflow camera`: operator commands of the camera pipeline (docs/camera.md#operations)."""

from __future__ import annotations

import re

import typer

app = typer.Typer(help="The camera pipeline: reset captures.", no_args_is_help=True)


@app.command()
def reset(image_ids: list[str] = typer.Argument(help="Image ids of the captures.")) -> None:
    """Forget captures in Redis so that their chunks are taken and processed anew: the chunks,
    meta, digests, processed flag, lock, sweep entry, the camera's session if it points there,
    and camera-ingest's idempotency keys of the capture's chunks. Objects and rows stay."""
    from devstack.dlq import with_stack_settings
    from functions.camera import capture
    from functions.camera.events import SAFE_SEGMENT
    from functions.runtime import clients

    bad = [i for i in image_ids if not re.fullmatch(SAFE_SEGMENT, i)]
    if bad:
        typer.echo(f"not an image id: {', '.join(map(repr, bad))}", err=True)
        raise typer.Exit(2)
    with with_stack_settings():
        store = capture.chunk_store()
        for image_id in image_ids:
            gone = clients.call("redis", lambda i=image_id: store.reset(i))
            typer.echo(
                f"{image_id}: {gone} key(s) deleted" if gone else f"{image_id}: nothing to reset"
            )
