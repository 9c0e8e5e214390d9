"""The benchmarks, found by convention: one folder per benchmark, `bench/<name>/`.

- `bench/<name>/__init__.py` (underscores in the folder are dashes in the name: `bench/ota_status/`
  is `--only ota-status`): a docstring (its first paragraph is the summary in `--help`),
  `OPTIONS = {"key": (default, "help")}` (the benchmark's own `--set key=value` settings; the
  default's type is the value's) and an optional `ORDER` (lower runs first, default 100). Kept
  free of heavy imports: `objectflow --help` reads it.
- `bench/<name>/bench.py`: `run(console, *, seconds, warmup, **options) -> bool`, False only
  when something was lost (a missed aim is a finding, not a failure).

A new benchmark adds its own folder; nothing here or in bench/cli.py changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.api import DevstackError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    package: str  # bench.<package>: the folder
    summary: str
    order: int
    options: dict[str, tuple[Any, str]]

    def run(self, console: Any, *, seconds: float, warmup: float, **settings: Any) -> bool:
        module = importlib.import_module(f"bench.{self.package}.bench")
        options = {key: default for key, (default, _help) in self.options.items()} | settings
        return bool(module.run(console, seconds=seconds, warmup=warmup, **options))


def discover() -> list[Bench]:
    """Every benchmark, in ORDER."""
    found = []
    for path in HERE.glob("*/bench.py"):
        folder = path.parent.name
        name = folder.replace("_", "-")
        package = importlib.import_module(f"bench.{folder}")
        summary = " ".join((package.__doc__ or name).split("\n\n")[0].split()).rstrip(".")
        options = dict(getattr(package, "OPTIONS", {}))
        found.append(Bench(name, folder, summary, getattr(package, "ORDER", 100), options))
    return sorted(found, key=lambda b: (b.order, b.name))


def select(only: list[str], benches: list[Bench]) -> list[Bench]:
    """The benchmarks `--only` names (every one for none or `all`)."""
    names = [b.name for b in benches]
    wanted = [n for n in only if n != "all"]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise DevstackError(f"no benchmark {', '.join(unknown)}; benchmarks: {', '.join(names)}")
    return [b for b in benches if not wanted or b.name in wanted]


def parse_settings(pairs: list[str], benches: list[Bench]) -> dict[str, dict[str, Any]]:
    """`--set key=value` -> {bench name: {key: typed value}} for the benchmarks declaring key."""
    out: dict[str, dict[str, Any]] = {b.name: {} for b in benches}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise DevstackError(f"--set wants KEY=VALUE (got {pair!r})")
        takers = [b for b in benches if key in b.options]
        if not takers:
            known = sorted({k for b in benches for k in b.options})
            raise DevstackError(
                f"no selected benchmark has the setting {key!r}; settings: {', '.join(known)}"
            )
        for bench in takers:
            default = bench.options[key][0]
            try:
                out[bench.name][key] = _typed(type(default), raw)
            except ValueError:
                raise DevstackError(
                    f"--set {key}: {raw!r} is not a {type(default).__name__}"
                ) from None
    return out


def _typed(kind: type, raw: str) -> Any:
    if kind is bool:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(raw)
        return raw.lower() in ("1", "true", "yes")
    return kind(raw)


def help_text(benches: list[Bench]) -> str:
    """The benchmarks and their settings, for `objectflow bench --help`."""
    lines = []
    for b in benches:
        lines.append(f"{b.name}: {b.summary}.")
        for key, (default, text) in b.options.items():
            lines.append(f"    --set {f'{key}={default}':<20} {text}")
    return "\n".join(lines)
