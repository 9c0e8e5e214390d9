"""Reports end to end (issue 17): a real rollout over simulated devices finishes, then its
reports are read from the running ota-reports — the CSV (one row per job, final status and
durations, parsed with Python's csv), the PDF (rendered by pdftoppm, its text holding the
rollout's counts) and the summary, which a replayed job.completed leaves unchanged."""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import requests

from devstack.ota import sim
from tests.e2e.ota.test_rollouts import fleet, rollout, running
from tests.ota_reports_support import pdf_png, pdf_text
from tests.ota_support import post_event, sql
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[3]
WAVES = [10, 100]
DEVICES = 40


def summary(ota_reports: str, firmware: str) -> dict[str, Any]:
    answer = requests.get(f"{ota_reports}/reports/summary", params={"firmware": firmware},
                          timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished_rollout(ota_api: str, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A rollout over DEVICES simulated devices, the last two of which fail, run to its end."""
    devices, version = fleet(ota_api, DEVICES)
    failing = frozenset(devices[-2:])
    behaviour = sim.Behaviour(firmware_ms=100, fail_devices=failing, seed=7)
    with running(devices, env, behaviour):
        answer = requests.post(f"{ota_api}/rollouts", timeout=30, json={
            "firmware_version": version, "devices": devices, "waves": WAVES,
            "success_threshold": 90})  # fmt: skip
        assert answer.status_code == 201, answer.text
        rid = answer.json()["id"]
        done = wait_for(lambda: (r := rollout(ota_api, rid))["status"] == "done" and r,
                        timeout=90, interval=0.5, what="the rollout done")  # fmt: skip
    return done, devices


def test_a_finished_rollouts_csv_pdf_and_summary(
    mqtt_env: None, ota_api: str, ota_reports: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    done, devices = finished_rollout(ota_api, stack_env)
    rid, firmware = done["id"], done["firmware_version"]
    assert (done["counts"]["done"], done["counts"]["error"]) == (DEVICES - 2, 2)

    # every job.completed reached ota-reports through job.events and the broker
    totals = wait_for(lambda: (t := summary(ota_reports, firmware)["totals"])["finished"]
                      == DEVICES and t,
                      timeout=30, interval=0.5, what="every job counted")  # fmt: skip
    assert (totals["succeeded"], totals["failed"], totals["timed_out"]) == (DEVICES - 2, 2, 0)
    assert totals["mean_duration_s"] > 0

    answer = requests.get(f"{ota_reports}/reports/jobs.csv", params={"rollout_id": rid},
                          timeout=30)  # fmt: skip
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text, newline="")))
    assert len(rows) == DEVICES and len({r["job_id"] for r in rows}) == DEVICES
    assert sorted(r["device_id"] for r in rows) == sorted(devices)
    assert {r["device_id"]: r["status"] for r in rows if r["status"] != "done"} == {
        d: "error" for d in devices[-2:]}  # fmt: skip
    for row in rows:
        assert row["rollout_id"] == rid and row["firmware_version"] == firmware
        assert row["created_at"] <= row["dispatched_at"] <= row["finished_at"], row
        assert float(row["duration_s"]) >= 0
    by_firmware = requests.get(f"{ota_reports}/reports/jobs.csv", params={"firmware": firmware},
                               timeout=30)  # fmt: skip
    assert by_firmware.text == answer.text

    pdf = requests.get(f"{ota_reports}/reports/rollouts/{rid}.pdf", timeout=30)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf_png(pdf.content, tmp_path).startswith(b"\x89PNG")
    lines = [" ".join(line.split()) for line in pdf_text(pdf.content, tmp_path).splitlines()]
    assert f"Rollout {rid}" in lines and f"done {DEVICES - 2}" in lines and "error 2" in lines
    first = math.ceil(DEVICES * WAVES[0] / 100)
    assert f"1 10% {first} done {first} 0 0 0 0 0" in lines
    assert f"2 100% {DEVICES - first} done {DEVICES - first - 2} 2 0 0 0 0" in lines
    assert "rollout.completed" in " ".join(lines)  # the timeline, from the rollout's events

    # Replayed job.completed (the outbox rows as the relay published them, each once more, as
    # a consumer re-reading the topic would deliver them) count nothing twice.
    before = sql(stack_env, "SELECT * FROM ota.report_daily WHERE key = %s ORDER BY 1, 2",
                 (firmware,))  # fmt: skip
    payloads = [r[0] for r in sql(stack_env, "SELECT o.payload FROM ota.event_outbox o JOIN "
                "ota.jobs j ON j.id::text = o.aggregate_id WHERE j.rollout_id = %s AND "
                "o.event_type = 'job.completed'", (rid,))]  # fmt: skip
    assert len(payloads) == DEVICES
    for payload in payloads:
        assert post_event(At(ota_reports), payload).status_code == 204
    assert sql(stack_env, "SELECT * FROM ota.report_daily WHERE key = %s ORDER BY 1, 2",
               (firmware,)) == before  # fmt: skip
    assert summary(ota_reports, firmware)["totals"] == totals

    # docs/ota.md's report session works as written on this rollout
    doc = (ROOT / "docs" / "ota.md").read_text()
    [script] = [b for b in re.findall(r"```sh\n(.*?)```", doc, re.S) if "/reports/" in b]
    script = script.replace(".venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", f"ROLLOUT={rid}\n{script}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"Rollout {rid}" in " ".join(ran.stdout.split())
    assert '"field":"from"' in ran.stdout
    [parse] = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "jobs.csv" in b]
    parsed = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", parse], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.startswith((f"{DEVICES} done ", f"{DEVICES} error ")), parsed.stdout


class At:
    """post_event's client: POSTs to the running function."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, **options: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", timeout=10, **options)


def test_bad_report_requests_are_specific_4xx(ota_reports: str) -> None:
    for params, field in (({"from": "2026-13-01"}, "from"), ({"status": "nope"}, "status"),
                          ({"from": "2026-03-02", "to": "2026-03-01"}, "to")):  # fmt: skip
        answer = requests.get(f"{ota_reports}/reports/jobs.csv", params=params, timeout=10)
        assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    missing = requests.get(f"{ota_reports}/reports/rollouts/{uuid.uuid4()}.pdf", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not-found"
