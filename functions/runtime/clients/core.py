"""The retry budget every backend call runs under, and how its failures are reported.

`within_budget(backend, fn)` retries what the backend calls transient (tenacity: exponential
backoff with jitter), in one client tracing span named after the backend when it runs for a
traced invocation. Transient failures
that outlast the budget become `DependencyUnavailable` (503, the broker retries later); a
credential the service rejects becomes a `SettingsError` naming the variable to fix, because
retrying cannot help.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import tenacity

from functions.runtime import settings, tracing
from functions.runtime.errors import DependencyUnavailable, SettingsError

T = TypeVar("T")
log = logging.getLogger("objectflow.clients")

Dependency = Literal["postgres", "redis", "s3", "rabbitmq", "kafka", "mqtt", "mongodb"]


def never_rejected(exc: BaseException) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """What the runtime knows of one dependency."""

    name: Dependency
    # exception types worth retrying; a function, so the client library loads only when used
    transient: Callable[[], tuple[type[BaseException], ...]]
    # one real protocol request (`objectflow check`), run by `clients.probe` under the budget
    probe: Callable[[], object]
    # the setting a rejection points at, or None if `exc` is no rejection
    rejected: Callable[[BaseException], str | None] = never_rejected
    # `cache_clear` of each cached factory, for `clients.reset()`
    caches: tuple[Callable[[], None], ...] = ()


def within_budget(backend: Backend, fn: Callable[[], T]) -> T:
    """Run `fn` against `backend` within the retry budget (see module docstring)."""
    transient = backend.transient()
    budget = settings.runtime()

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, transient) and backend.rejected(exc) is None

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(budget.retry_attempts),
        wait=tenacity.wait_random_exponential(
            multiplier=budget.retry_base_delay, max=budget.retry_max_delay
        ),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=lambda state: log.warning(
            "%s call failed, retrying",
            backend.name,
            extra={
                "attempt": state.attempt_number,
                "error": repr(state.outcome and state.outcome.exception()),
            },
        ),
        reraise=True,
    )
    try:
        # off, or a background loop's poll (no trace of its own): no span
        if not tracing.enabled() or not tracing.in_trace():
            return retrying(fn)
        with tracing.span(
            backend.name, kind=tracing.Kind.CLIENT, attributes={"peer.service": backend.name}
        ):
            return retrying(fn)
    except Exception as exc:
        setting = backend.rejected(exc)
        if setting is not None:
            raise SettingsError(setting, f"rejected by {backend.name}: {first_line(exc)}") from exc
        if isinstance(exc, transient):
            raise DependencyUnavailable(backend.name, first_line(exc)) from exc
        raise


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
