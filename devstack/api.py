"""What code outside devstack (bench/) may use of it; everything else in devstack is internal.

Kept small and stable so devstack can change inside without breaking its users. The direction is
one way: devstack never imports its users (see devstack/__init__.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from devstack.camera import sim as camera_sim
from devstack.config import HOST, PATHS, ROOT, read_env_file
from devstack.errors import DevstackError
from devstack.ota import sim as ota_sim
from devstack.process import free_port
from devstack.runtime.zygote import Zygote
from devstack.wiring import Values
from devstack.wiring import load as load_values

__all__ = [
    "HOST",
    "PATHS",
    "ROOT",
    "DevstackError",
    "Values",
    "Zygote",
    "broker_url",
    "camera_sim",
    "free_port",
    "load_values",
    "ota_sim",
    "read_env_file",
    "runtime_pid",
]


def broker_url(values: Values) -> str:
    """The local broker's ingress URL for these values."""
    from devstack.runtime import supervisor

    return supervisor.broker_url(values)


def runtime_pid(overlays: Sequence[Path]) -> int | None:
    """The pid of the local runtime started with these values files, if it runs."""
    from devstack import process
    from devstack.runtime import supervisor

    return process.our_pid(supervisor.spec(overlays))
