"""One exception hierarchy; each error knows the HTTP status Knative delivery acts on.

400/413/415/422: the event is bad -> dead-lettered at once, never retried (404: not found, for
HTTP APIs).
500/503: something failed that may recover -> retried with backoff, then dead-lettered.
"""

from __future__ import annotations

from typing import Any


class ObjectflowError(Exception):
    """Base class. `code` is a stable machine-readable kind, used in bodies and metrics."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadEvent(ObjectflowError):
    """The request is not a usable CloudEvent (missing attributes, unreadable body)."""

    status = 400
    code = "bad-event"


class PayloadTooLarge(BadEvent):
    status = 413
    code = "payload-too-large"


class UnsupportedMediaType(BadEvent):
    status = 415
    code = "unsupported-media-type"


class InvalidData(BadEvent):
    """The event is well-formed but its data breaks the contract (schema or domain rule)."""

    status = 422
    code = "invalid-data"

    def __init__(
        self, detail: str, *, field: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail, field=field)
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(ObjectflowError):
    """An HTTP request an API cannot serve as asked (a malformed path or parameter)."""

    status = 400
    code = "bad-request"


class Unauthorized(ObjectflowError):
    """No credentials, or wrong ones."""

    status = 401
    code = "unauthorized"


class NotFound(ObjectflowError):
    """What an HTTP request names does not exist."""

    status = 404
    code = "not-found"


class Conflict(ObjectflowError):
    """The request conflicts with the current state of what it names (subclasses name the kind)."""

    status = 409
    code = "conflict"


class DependencyUnavailable(ObjectflowError):
    """A backing service did not answer within the retry budget; the broker should retry."""

    status = 503
    code = "dependency-unavailable"

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency}: {detail}")
        self.dependency = dependency

    def body(self) -> dict[str, Any]:
        return {**super().body(), "dependency": self.dependency}


class SettingsError(ObjectflowError):
    """A setting is missing, malformed, or rejected by the service it configures.

    The message always names the environment variable(s) to fix.
    """

    status = 500
    code = "settings"

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}", field=setting)
        self.setting = setting
