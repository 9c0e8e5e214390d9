"""docs/catalog.md's walk-through works as written against the running runtime."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from devstack import wiring

ROOT = Path(__file__).resolve().parents[3]


def test_the_documented_curl_session_works(values: wiring.Values, broker: str) -> None:
    [script] = re.findall(r"```shell\n(.*?)```", (ROOT / "docs" / "catalog.md").read_text(), re.S)
    port = values.function_ports()["catalog-api"]
    assert f"API=http://127.0.0.1:{port}" in script  # the port the doc names is the real one
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [bool(line.get("sha256")) for line in lines[:2]] == [True, True]
    assert lines[2]["cached"] is False and len(lines[2]["images"]) == 2
    assert "downloaded the same bytes" in done.stdout
    assert lines[-2]["object_deletion"] == "broker"
    assert lines[-1]["error"] == "unsupported-image"
