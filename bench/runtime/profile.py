"""py-spy (bench dependency group) sampling the broker and the function during one latency run.

`record` starts one sampler per process: raw collapsed stacks of the thread holding the GIL, so
the samples count Python work on the CPU, not threads waiting for the GIL. `summary` turns them
into CPU shares per part of the hot path, which bench.py multiplies by the measured CPU time per
event.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

RATE = 200  # samples/s per process

# (part, substrings of a frame "function (file:line)"); the innermost matching frame decides.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("journal (sqlite commit)", ("journal.py",)),
    ("CloudEvents SDK + ce-* header coding", ("cloudevents/", "cehttp.py")),
    ("prometheus metrics", ("prometheus_client/",)),
    ("logging", ("logging/", "pythonjsonlogger/")),
    ("aiohttp client (delivery POST)", ("aiohttp/client", "aiohttp/connector")),
    ("aiohttp server (ingress)", ("aiohttp/web", "aiohttp/http_parser", "aiohttp/_http_parser")),
    ("broker routing + delivery", ("broker.py", "knative.py", "wiring.py", "tenacity/")),
    ("uvicorn (HTTP server)", ("uvicorn/", "h11/", "httptools/")),
    ("starlette + functions-framework", ("starlette/", "functions_framework/")),
    ("json", ("json/",)),
    ("asyncio event loop + sockets", ("asyncio/", "selectors.py", "socket.py", "uvloop")),
)


def record(pids: dict[str, list[int]], seconds: float, out: Path, delay: float) -> list[Sampler]:
    """Sample `pids` ({part: [pid, ...]}) for `seconds` after `delay` seconds (the warm-up);
    output in out/profile-<part>-<pid>.txt."""
    return [Sampler(part, pid, seconds, out, delay) for part, ids in pids.items() for pid in ids]


class Sampler:
    """One py-spy process, started after `delay` on a thread so the sender is not held up."""

    def __init__(self, part: str, pid: int, seconds: float, out: Path, delay: float) -> None:
        spy = str(Path(sys.executable).with_name("py-spy"))
        self.command = [
            spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(RATE), "--format", "raw", "--nonblocking", "--gil",
            "--output", str(out / f"profile-{part}-{pid}.txt"),
        ]  # fmt: skip
        self._thread = threading.Timer(delay, self._run)
        self._thread.start()

    def _run(self) -> None:
        subprocess.run(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self) -> None:
        self._thread.join()


def summary(files: list[Path], top: int = 15) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """CPU shares (0..1) per part of PARTS ("other" for the rest) and the `top` leaf frames."""
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            n = int(count)
            total += n
            leaves[frames[-1]] += n
            parts[_part(frames)] += n
    if not total:
        return {}, []
    shares = {part: n / total for part, n in parts.most_common()}
    return shares, [(leaf, n / total) for leaf, n in leaves.most_common(top)]


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return "other"
