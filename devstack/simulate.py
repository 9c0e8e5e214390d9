"""`objectflow simulate`: simulated devices against the running stack (devstack/<domain>/sim.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

app = typer.Typer(help="Simulated devices against the running stack.", no_args_is_help=True)
Rate = Annotated[float, typer.Option(min=0.0, max=1.0)]


@app.command()
def devices(
    count: Annotated[int, typer.Option(min=1, help="Devices, each its own MQTT session.")] = 100,
    firmware_ms: Annotated[float, typer.Option(min=0, help="Time a device flashes.")] = 500,
    fail_rate: Rate = 0.0,
    drop_rate: Rate = 0.0,
    dup_rate: Rate = 0.0,
    reorder_rate: Rate = 0.0,
    disconnect_rate: Rate = 0.0,
    delay_ms: Annotated[float, typer.Option(min=0, help="Up to this delay per status.")] = 0,
    heartbeat_s: Annotated[
        float, typer.Option(min=0, help="Seconds between heartbeats on telemetry/<id>; 0: none.")
    ] = 10,
    silent_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of devices sending no heartbeat.")
    ] = 0.0,
    prefix: Annotated[str, typer.Option(help="Device ids are <prefix>-00000 ...")] = "sim",
    register: Annotated[bool, typer.Option(help="Register the devices through ota-api.")] = False,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to run; 0: until Ctrl-C.")] = 0,
    seed: Annotated[int | None, typer.Option(help="Makes the misbehaviour repeatable.")] = None,
) -> None:
    """OTA devices (docs/ota.md "Device simulator"): each takes the commands on
    commands/<id>/ota, downloads and verifies the firmware and reports its statuses on
    status/<id>/update over a link as flaky as the rates say, and heartbeats on
    telemetry/<id> (rollouts dispatch only to devices seen lately)."""
    from devstack import wiring
    from devstack.dlq import with_stack_settings
    from devstack.ota import sim

    ids = [f"{prefix}-{n:05d}" for n in range(count)]
    behaviour = sim.Behaviour(
        firmware_ms=firmware_ms, fail_rate=fail_rate, drop_rate=drop_rate, dup_rate=dup_rate,
        reorder_rate=reorder_rate, delay_ms=delay_ms, disconnect_rate=disconnect_rate,
        heartbeat_s=heartbeat_s, silent_rate=silent_rate, seed=seed,
    )  # fmt: skip
    console = Console()
    with with_stack_settings():
        broker = sim.stack_broker()
        if register:
            api = f"http://127.0.0.1:{wiring.default().ports()['ota-api']}"
            failed = asyncio.run(sim.register(api, ids))
            console.print(f"registered {count - len(failed)} devices through {api}")
            if failed:
                raise typer.Exit(f"could not register {len(failed)} devices, e.g. {failed[0]}")
    stats = sim.Stats()
    end = time.monotonic() + duration if duration else float("inf")
    with Live(stats.line(), console=console, refresh_per_second=2) as live:

        def until() -> bool:
            live.update(stats.line())
            return time.monotonic() >= end

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(sim.simulate(ids, broker, behaviour, stats, until=until))
    finished = sorted(stats.finished.values())
    console.print(
        f"{len(finished)} devices finished: {finished.count('done')} done, "
        f"{finished.count('error')} error"
    )
