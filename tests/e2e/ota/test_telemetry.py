"""Telemetry end to end (issue 17): simulated devices heartbeat on telemetry/<id> -> MQTT bridge
-> Kafka device.telemetry -> ota-telemetry (device presence) while a rollout runs; 20% of them
are silent. The rollout dispatches to the online ones only, counts the silent ones `offline`,
and dispatches to each as soon as it heartbeats (the telemetry handler steps the rollout, no
minute tick needed); the device read shows what the heartbeats said."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from devstack.ota import sim
from tests.e2e.ota.test_rollouts import fleet, rollout
from tests.ota_support import Commands, unique
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[3]
HEARTBEAT_S = 2.0


@contextmanager
def simulated(
    devices: list[str], env: dict[str, str], behaviour: sim.Behaviour
) -> Iterator[tuple[sim.Stats, Commands]]:
    broker = sim.Broker("127.0.0.1", 1883, env["MQTT_USER"], env["MQTT_PASSWORD"])
    stats, stop = sim.Stats(), threading.Event()
    runner = threading.Thread(target=lambda: asyncio.run(
        sim.simulate(devices, broker, behaviour, stats, until=stop.is_set)))  # fmt: skip
    commands = Commands(devices)
    runner.start()
    try:
        wait_for(lambda: stats.connected == len(devices), timeout=60, what="devices connected")
        yield stats, commands
    finally:
        stop.set()
        runner.join(timeout=30)
        commands.close()


def device(ota_api: str, device_id: str) -> dict[str, object]:
    answer = requests.get(f"{ota_api}/devices/{device_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_rollout_waits_for_silent_devices_and_dispatches_each_on_its_first_heartbeat(
    mqtt_env: None, ota_api: str, stack_env: dict[str, str]
) -> None:
    devices, version = fleet(ota_api, 40)
    silent = devices[::5]  # 20%
    online = [d for d in devices if d not in silent]
    behaviour = sim.Behaviour(firmware_ms=100, heartbeat_s=HEARTBEAT_S,
                              silent_devices=frozenset(silent), seed=7)  # fmt: skip
    with simulated(devices, stack_env, behaviour) as (stats, commands):
        wait_for(lambda: all(device(ota_api, d)["online"] for d in online), timeout=30,
                 interval=0.5, what="the heartbeating devices online")  # fmt: skip
        assert not any(device(ota_api, d)["online"] for d in silent)
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": [100]})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]

        # the online devices are updated; the silent ones wait, counted offline
        waiting = wait_for(
            lambda: (r := rollout(ota_api, rid))["counts"]["done"] == len(online) and r,
            timeout=60, interval=0.5, what="the online devices done")  # fmt: skip
        assert waiting["status"] == "running"
        assert waiting["counts"]["offline"] == len(silent) == 8
        assert waiting["waves"][0]["counts"]["offline"] == len(silent)
        assert all(commands.of(d) == [] for d in silent)
        assert all(d not in stats.command_times for d in silent)

        # half of them come back: each is dispatched within seconds of its first heartbeat,
        # the others still wait
        back, still = silent[:4], silent[4:]
        woken = time.time()
        stats.silent.difference_update(back)
        wait_for(lambda: all(d in stats.command_times for d in back), timeout=20,
                 interval=0.2, what="commands at the devices back online")  # fmt: skip
        delays = [stats.command_times[d] - woken for d in back]
        assert max(delays) < 10, delays  # not the minute tick
        assert all(d not in stats.command_times for d in still)
        assert rollout(ota_api, rid)["counts"]["offline"] == len(still)

        woken = time.time()
        stats.silent.difference_update(still)
        done = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "done" and r,
                        timeout=30, interval=0.5, what="the rollout done")  # fmt: skip
        assert max(stats.command_times[d] - woken for d in still) < 10
        assert done["counts"]["done"] == len(devices) and done["counts"]["offline"] == 0
        # the device read: what the heartbeats say, the new firmware among it
        wait_for(lambda: device(ota_api, silent[0])["reported_firmware"] == version,
                 timeout=20, interval=0.5, what="the new firmware reported")  # fmt: skip
        shown = device(ota_api, silent[0])
        assert shown["online"] is True and shown["current_firmware"] == version
        assert isinstance(shown["battery"], float) and isinstance(shown["signal"], float)


def test_the_documented_heartbeat_works(ota_api: str, tmp_path: Path) -> None:
    """docs/ota.md's mosquitto_pub session as written (its own device id; the doc's sleep
    replaced by waiting on the device read)."""
    doc = (ROOT / "docs" / "ota.md").read_text()
    [script] = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "mosquitto_pub" in b]
    device_id = unique("dev-t1")
    script = script.replace("dev-t1", device_id).replace(
        ".devstack/env", str(ROOT / ".devstack" / "env")
    )
    script = "\n".join(line for line in script.splitlines() if not line.startswith("sleep "))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", f"API={ota_api}\n{script}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    shown = wait_for(lambda: (d := device(ota_api, device_id))["online"] and d, timeout=30,
                     interval=0.3, what="the documented heartbeat applied")  # fmt: skip
    assert (shown["reported_firmware"], shown["battery"], shown["signal"]) == ("1.0.0", 87.5, -67)
