"""`make demo`'s rollout step (devstack/ota/demo.py) against the running runtime: 3 waves over
200 simulated devices, 30% of wave 2 failing, pause themselves in wave 2 with the reason and
release nothing of wave 3. (Its PDF step needs ota-reports: tests/unit/ota/test_demo_report.py.)"""

from __future__ import annotations

import io

import requests
from rich.console import Console

from devstack.ota import demo


def test_the_demo_rollout_pauses_itself_in_wave_2(ota_api: str) -> None:
    out = io.StringIO()
    rollout_id = demo.rollout(ota_api, Console(file=out, width=200))
    assert rollout_id is not None, out.getvalue()
    rollout = requests.get(f"{ota_api}/rollouts/{rollout_id}", timeout=10).json()
    assert rollout["status"] == "paused" and rollout["current_wave"] == 2
    assert rollout["reason"].startswith("wave 2: ")
    assert "over abort.failure_percent 20%" in rollout["reason"]
    first, second, third = rollout["waves"]
    assert [len(w["devices"]) for w in rollout["waves"]] == [10, 50, 140]
    assert first["status"] == "done" and first["counts"]["done"] == 10
    assert second["status"] == "paused" and second["counts"]["error"] >= 3
    assert third["counts"]["pending"] == 140  # nothing of wave 3 was released
    assert f"ota: rollout {rollout_id}" in out.getvalue()
