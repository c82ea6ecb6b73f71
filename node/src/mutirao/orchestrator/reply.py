"""What every HTTP handler of the orchestrator needs: JSON replies and the user."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mutirao.auth import User


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def user_of(request: web.Request) -> User:
    """The authenticated user (set by the API middleware)."""
    user: User = request["user"]
    return user
