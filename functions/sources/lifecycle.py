"""How a long-running source adapter process (the MQTT bridge, the MongoDB outbox) runs: JSON
logs, tracing (functions.runtime.tracing), its settings, Prometheus metrics on
`OBJECTFLOW_METRICS_PORT`, SIGTERM/SIGINT as a graceful stop, and exit status 2 for bad
settings (an operator must fix them; restarting will not help)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Protocol

from functions.runtime import logging as objectflow_logging
from functions.runtime import tracing
from functions.runtime.errors import SettingsError

log = logging.getLogger("objectflow.sources")


class Source(Protocol):
    def run(self) -> None:
        """Work until `stop` is called."""

    def stop(self, *_args: object) -> None:
        """Ask `run` to return (a signal handler: it only sets a flag)."""


def main(name: str, build: Callable[[], tuple[Source, int | None]]) -> int:
    """Run the source `build` makes from its settings (with its metrics port, or None);
    returns the process's exit status."""
    objectflow_logging.configure(name)
    tracing.configure(name)
    try:
        source, metrics_port = build()
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        signal.signal(signal.SIGTERM, source.stop)
        signal.signal(signal.SIGINT, source.stop)
        source.run()
    except SettingsError as exc:
        log.error("bad settings: %s", exc.detail, extra={"setting": exc.setting})
        return 2
    return 0
