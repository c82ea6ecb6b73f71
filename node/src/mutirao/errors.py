"""Errors by what the caller should do about them.

:class:`PermanentError` means the request itself is wrong and retrying it cannot help;
:class:`TemporaryError` means the same request may succeed later. Each carries the HTTP status
and a JSON body, so the HTTP layer maps them in one place.
"""

from __future__ import annotations

import math
from typing import Any


class MutiraoError(Exception):
    """Root of every error Mutirão raises on purpose."""

    status = 500
    code = "internal"
    default_field: str | None = None
    """What an error of this kind names when the raiser names nothing more precise."""

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field if field is not None else self.default_field
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the JSON body."""
        return {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.details)
        return body


class PermanentError(MutiraoError):
    """Retrying the same request cannot succeed."""

    status = 400
    code = "bad_request"


class TemporaryError(MutiraoError):
    """The same request may succeed later (after ``delay`` seconds, if given)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, delay: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.delay = delay

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.delay)))}


class ValidationError(PermanentError):
    """A field of the request is missing, mistyped or out of range."""

    status = 422
    code = "invalid"


class UnstorableError(ValidationError):
    """Valid JSON the cluster cannot store: an integer beyond 64 bits, nesting too deep."""

    status = 400


class DependencyError(ValidationError):
    """A task's ``after`` or ``$result`` refs cannot be waited for: a task that does not
    exist or is someone else's, an item outside the batch, a cycle (HTTP 400)."""

    status = 400
    code = "bad_dependency"


class MalformedError(PermanentError):
    """The request body is not valid JSON (or not the expected shape at all)."""

    code = "malformed"


class TooLargeError(PermanentError):
    status = 413
    code = "too_large"


class NotFoundError(PermanentError):
    status = 404
    code = "not_found"


class RequestTimeoutError(PermanentError):
    """The client took too long to send its request."""

    status = 408
    code = "request_timeout"


class ConflictError(PermanentError):
    status = 409
    code = "conflict"


class AuthError(PermanentError):
    """Missing, wrong or expired credentials."""

    status = 401
    code = "unauthorized"
    default_field = "Authorization"


class ForbiddenError(PermanentError):
    """The credentials are fine but their role (or certificate) may not do this."""

    status = 403
    code = "forbidden"
    default_field = "Authorization"


class ProtocolError(PermanentError):
    """A peer sent a message that does not decode to any known message type."""

    code = "protocol"


class NotLeaderError(TemporaryError):
    """This orchestrator is a standby: send the request to ``leader`` instead."""

    status = 421
    code = "not_leader"


class TooManyRequestsError(TemporaryError):
    """Too many attempts (failed logins): try again after ``delay`` seconds."""

    status = 429
    code = "too_many_requests"
    default_field = "address"


class NoSpaceError(TemporaryError):
    """The journal's disk is full: writes are refused until space frees; reads go on."""

    status = 507
    code = "no_space"


INTERNAL_ERROR: dict[str, Any] = {
    "error": "internal",
    "message": "internal error; see the server log",
}
"""The answer to a request that failed on a bug: details go to the log, not to the client."""
