"""Structured JSON logs; every line logged while handling an event carries its context."""

from __future__ import annotations

import contextvars
import functools
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from functions.runtime import settings

_event_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "objectflow_event_context", default=None
)


class _EventContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_event_context.get() or {}).items():
            setattr(record, key, value)
        return True


@functools.cache
def configure(function: str) -> None:
    """Send JSON lines to stderr for this process (once; idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"function": function},
        )
    )
    handler.addFilter(_EventContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.runtime().log_level.upper())


@contextmanager
def event_context(**fields: Any) -> Iterator[None]:
    """Attach fields (event id, type, source, subject, traceparent) to every log line inside."""
    token = _event_context.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _event_context.reset(token)


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled) for an event that arrives without one."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
