"""The operator dashboard in a real browser (issue 17): Debian's chromium, driven by Selenium
with JavaScript switched off, reads a running rollout's page from the running ota-reports —
its wave bars match ota-api's counts — and its Pause and Cancel buttons act (ota-api
confirms). Each page's screenshot is written to docs/img/ (docs/ota.md shows them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from selenium.webdriver.common.by import By

from devstack.ota import sim
from tests.e2e.ota.test_rollouts import fleet, rollout, running
from tests.ota_reports_support import chromium
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "docs" / "img"
IN_FLIGHT = ("scheduled", "ready", "dispatched", "downloading", "flashing")


def shoot(browser: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"ota-dashboard-{name}.png"))


def shown_waves(browser: Any) -> list[dict[str, int]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "table.waves tr[data-wave]")
    return [{k: int(row.get_attribute(f"data-{k}")) for k in ("wave", "done", "failed", "size")}
            for row in rows]  # fmt: skip


def api_waves(body: dict[str, Any]) -> list[dict[str, int]]:
    return [{"wave": n, "done": w["counts"]["done"],
             "failed": w["counts"]["error"] + w["counts"]["timed_out"], "size": len(w["devices"])}
            for n, w in enumerate(body["waves"], start=1)]  # fmt: skip


def test_the_rollout_page_shows_the_waves_and_its_buttons_act(
    mqtt_env: None, ota_api: str, ota_reports: str, stack_env: dict[str, str]
) -> None:
    devices, version = fleet(ota_api, 40)
    behaviour = sim.Behaviour(firmware_ms=100, fail_devices=frozenset(devices[6:8]), seed=11)
    with running(devices, stack_env, behaviour), chromium() as browser:
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": [10, 100],
            "max_per_minute": 40,
            "abort": {"failure_percent": 50, "min_finished": 10}})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        # wave 2 under way, at the pace of one command every 1.5 s
        wait_for(lambda: rollout(ota_api, rid)["waves"][1]["counts"]["done"] >= 3,
                 timeout=45, interval=0.5, what="wave 2 under way")  # fmt: skip

        browser.get(f"{ota_reports}/")
        section = browser.find_element(By.CSS_SELECTOR, f'section[data-rollout="{rid}"]')
        assert version in section.text and "running" in section.text
        shoot(browser, "index")

        browser.get(f"{ota_reports}/rollouts/{rid}")
        assert browser.find_element(By.ID, "rollout-status").text == "running"
        browser.find_element(By.ID, "pause").click()  # a plain form: no JavaScript needed
        wait_for(lambda: "pause: done" in browser.find_element(By.ID, "notice").text,
                 timeout=15, what="the pause confirmed on the page")  # fmt: skip
        assert rollout(ota_api, rid)["status"] == "paused"  # ota-api confirms

        # paused: the jobs with their devices end, then the page and the API agree
        settled = wait_for(lambda: not any((r := rollout(ota_api, rid))["counts"][s]
                                           for s in IN_FLIGHT) and r,
                           timeout=30, interval=0.5, what="in-flight jobs finished")  # fmt: skip
        browser.get(f"{ota_reports}/rollouts/{rid}")
        assert browser.find_element(By.ID, "rollout-status").text == "paused"
        assert shown_waves(browser) == api_waves(settled)
        cells = browser.find_elements(By.CSS_SELECTOR, "table.counts td[data-status]")
        assert {c.get_attribute("data-status"): int(c.text) for c in cells} == settled["counts"]
        assert 0 < settled["waves"][1]["counts"]["done"] < len(settled["waves"][1]["devices"])
        shoot(browser, "rollout")

        failure = browser.find_element(By.CSS_SELECTOR, "a[href^='/jobs/']")
        failure.click()
        history = browser.find_element(By.CSS_SELECTOR, "table.history").text
        assert "job.completed" in history and "error" in history
        shoot(browser, "job")

        browser.get(f"{ota_reports}/rollouts/{rid}")
        browser.find_element(By.ID, "cancel").click()
        wait_for(lambda: "cancel: done" in browser.find_element(By.ID, "notice").text,
                 timeout=15, what="the cancel confirmed on the page")  # fmt: skip
        assert rollout(ota_api, rid)["status"] == "cancelled"
