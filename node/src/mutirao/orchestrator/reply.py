"""What every HTTP handler of the orchestrator needs: JSON replies and the user."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mutirao.auth import User
from mutirao.errors import ForbiddenError


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def user_of(request: web.Request) -> User:
    """The authenticated user (set by the API middleware)."""
    user: User = request["user"]
    return user


def submitter_of(request: web.Request, what: str) -> User:
    """The authenticated user, if it may change work (``what``: what a viewer may not)."""
    user = user_of(request)
    if not user.may_submit:
        raise ForbiddenError(f"user {user.name} is a viewer: it may not {what}")
    return user
