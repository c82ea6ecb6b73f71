"""What a client call can fail with (shared by the HTTP client and sessions)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The orchestrator answered with an error (4xx/5xx and a JSON body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        where = f" (field {body['field']})" if body.get("field") else ""
        super().__init__(f"{body.get('message', body)}{where} [HTTP {status}]")


class Unreachable(Exception):
    """No orchestrator URL answered within the retry budget."""
