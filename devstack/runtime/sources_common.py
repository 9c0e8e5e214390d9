"""What the local source stand-ins (KafkaSource `kafka_source`, PingSource `ticker`) share
besides `functions.sources.sink`: one-line exits on bad settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from devstack import wiring
from functions.runtime.errors import SettingsError

log = logging.getLogger(__name__)


@contextmanager
def exit_on_bad_settings(prog: str) -> Iterator[None]:
    """A bad wiring or environment ends the process with one line on stderr, not a traceback."""
    try:
        yield
    except (wiring.WiringError, SettingsError) as exc:
        raise SystemExit(f"{prog}: {exc}") from None
