"""`objectflow demo`: every domain's demo against the running stack, found by convention.

A domain's demo is `devstack/<domain>/demo.py` with `run(env, console) -> bool` (True when every
step behaved as expected) and an optional `ORDER` (lower runs first, default 100). A new domain
adds its own folder; nothing here changes.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """Every domain with a demo, alphabetically (cheap: no imports)."""
    return sorted(path.parent.name for path in HERE.glob("*/demo.py"))


def run(env: dict[str, str], console: Any, only: list[str] | None = None) -> bool:
    """Run the demos named in `only` (all when empty) in ORDER; True when every one passed."""
    from devstack.errors import DevstackError

    known = names()
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        raise DevstackError(f"no demo {', '.join(unknown)}; demos: {', '.join(known)}")
    modules = [importlib.import_module(f"devstack.{name}.demo") for name in only or known]
    ok = True
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        ok &= bool(module.run(env, console))  # every demo runs, even after one failed
    return ok


def wait(what: Callable[[], T], timeout: float = 30.0) -> T | None:
    """Poll `what` until it returns something truthy; None after `timeout` s (a demo reports a
    step it did not see; it does not raise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.1)
    return None
