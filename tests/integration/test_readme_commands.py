"""Every command README.md, docs/*.md and bench/README.md give works as written in a fresh shell
(`env -i PATH=/usr/bin:/bin HOME=$HOME`, no uv or venv on PATH) once `make up` has run.

Read-only ones run for real; the rest (they start servers, change or delete state, or need
Docker) are checked to exist: `make -n <target>`, `<command> --help`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
COMMAND = re.compile(r"(uv run|\.venv/bin/|make |objectflow )")  # `objectflow` alone names the CLI
OBJECTFLOW = ".venv/bin/objectflow"
# objectflow subcommands that only read, or fire a tick at the running stack
SAFE = (["--help"], ["status"], ["dlq", "list"], ["tick"], ["catalog"], ["check"],
        ["kind", "up", "--dry-run"], ["kind", "down", "--dry-run"])  # fmt: skip
SAFE_MAKE = {"help", "status", "dlq", "check", "tick"}


def doc_commands() -> list[str]:
    """Shell commands in fenced bash blocks and inline code spans, `&&` chains split."""
    found: dict[str, None] = {}
    for doc in DOCS:
        text = doc.read_text()
        lines = [
            line
            for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.DOTALL)
            for line in block.replace("\\\n", " ").splitlines()
        ]
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        lines += re.findall(r"`([^`\n]+)`", prose)
        for line in lines:
            for part in line.split("&&"):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:  # one line of a quoted multi-line argument (SQL for psql)
                    continue
                if words and COMMAND.match(shlex.join(words)):
                    found[shlex.join(words)] = None
    return list(found)


def placeholder(word: str) -> bool:
    return bool(re.search(r"[<\[]|\.\.\.", word)) or word.isupper()


def fresh_shell(command: str) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={os.environ['HOME']}"]
    return subprocess.run(
        [*env, "bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def plan(words: list[str]) -> list[str]:
    """The command to run in a fresh shell for a documented one."""
    cut = next((i for i, w in enumerate(words) if placeholder(w.split("=")[-1])), len(words))
    if words[0] == "make":
        target = words[1]
        if target in SAFE_MAKE and cut == len(words):
            return words
        return ["make", "-n", target]
    args = words[1:]
    if words[0] == OBJECTFLOW and cut == len(words) and any(args[: len(s)] == s for s in SAFE):
        return words
    return [*words[:cut], "--help"] if "--help" not in words else words


def test_the_docs_have_commands() -> None:
    commands = doc_commands()
    assert "make tick SCHEDULE=camera-reconcile" in commands
    assert any(c.startswith(f"{OBJECTFLOW} ") for c in commands)


@pytest.mark.parametrize("command", doc_commands())
def test_doc_command_works_in_a_fresh_shell(command: str, stack_env: dict[str, str]) -> None:
    words = shlex.split(command)
    assert words[0] != "uv", f"uv is not on a fresh shell's PATH: write {command!r} as make/.venv"
    assert words[0] != "objectflow", f"objectflow is not on PATH: write .venv/bin/{command}"
    run = shlex.join(plan(words))
    done = fresh_shell(run)
    assert done.returncode == 0, f"{run}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
