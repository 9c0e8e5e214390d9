"""docs/ota.md's curl session works as written against the running runtime's ota-api."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

from tests.ota_support import unique

ROOT = Path(__file__).resolve().parents[3]


def test_the_documented_curl_session_works(ota_api: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "ota.md").read_text()
    [script] = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "/jobs" in b]
    # versions and devices are global: this run's own names, as the doc tells a reader to pick
    for name in ("1.2.0", "1.2.1", "dev-1"):
        script = script.replace(name, unique(name))
    script = script.replace(".venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"API={ota_api}\n{script}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = re.findall(r"HTTP/1\.1 (\d{3})", done.stdout)  # a body ends with no newline
    assert statuses == ["201", "200", "200"]  # created; patched; cancelled
    assert re.findall(r'^etag: "(\d+)"', done.stdout, re.M | re.I) == ["1", "2", "3"]
    bodies = objects(done.stdout)  # curl -s prints a body with no newline after it
    first, second = bodies[0], bodies[1]
    assert first["sha256"] == second["sha256"] and first["size"] == 1048576
    assert bodies[2]["timezone"] == "Europe/Berlin"
    patched, cancelled, listed = bodies[-3:]
    assert patched["schedule"]["due_at"] == "2030-01-01T08:00:00Z"
    assert cancelled["status"] == "cancelled" and cancelled["status_reason"] == "recalled"
    assert [job["status"] for job in listed["jobs"]] == ["cancelled"]


def test_the_documented_signature_check_works(ota_api: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "ota.md").read_text()
    [script] = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "/signing-key" in b]
    script = textwrap.dedent(script).replace("1.3.0", unique("1.3.0"))
    script = script.replace(".venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"API={ota_api}\n{script}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "Signature Verified Successfully"


def test_the_documented_rollout_session_works(ota_api: str, firmware: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "ota.md").read_text()
    [script] = [b for b in re.findall(r"```bash\n(.*?)```", doc, re.S) if "/rollouts" in b]
    script = script.replace("1.2.0", firmware)  # the fixture uploaded it, as "API" did
    for name in ("dev-a", "dev-b", "dev-c"):
        script = script.replace(name, unique(name))
    script = script.replace(".venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"API={ota_api}\n{script}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"HTTP/1\.1 (\d{3})", done.stdout) == ["201", "200", "200", "200"]
    assert re.findall(r'^etag: "(\d+)"', done.stdout, re.M | re.I) == ["1", "2", "3", "4"]
    created, fetched, paused, resumed, cancelled = objects(done.stdout)[-5:]
    assert created["status"] == "running" and [len(w["devices"]) for w in created["waves"]] == [
        2,
        1,
    ]
    assert (
        fetched["id"] == created["id"] and fetched["maintenance_window"]["duration_minutes"] == 180
    )
    assert paused["status"] == "paused" and paused["reason"] == "night shift"
    assert resumed["status"] == "running"
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] >= 1


def objects(text: str) -> list[dict[str, object]]:
    """The JSON objects in `text`, in order (headers and other text between them skipped)."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        value, end = decoder.raw_decode(text, at)
        found.append(value)
        at = text.find("{", end)
    return found
