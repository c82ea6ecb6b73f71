"""Rate limits and quotas over HTTP: ``/v1/limits/{type}`` and ``/v1/quotas/{user}``.

Setting or removing one is an admin's act, committed as a journal record like a task
(durable here and on the standbys before the answer), so a new leader applies exactly the
limits the old one acknowledged. Anyone signed in may read the limits, and their own quota.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from aiohttp import web

from mutirao import protocol
from mutirao.errors import ForbiddenError, NotFoundError, ValidationError
from mutirao.orchestrator.limits import ANY_USER, Limit, LimitSpec, Quota, QuotaSpec, limit
from mutirao.orchestrator.reply import json_reply, user_of
from mutirao.orchestrator.service import ORCHESTRATOR
from mutirao.protocol import invalid
from mutirao.serving import read_body

S = TypeVar("S", LimitSpec, QuotaSpec)
_USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _admin(request: web.Request, what: str) -> None:
    if not user_of(request).admin:
        raise ForbiddenError(f"{what} is for admins")


_COUNTS = ("burst", "concurrency", "max_running", "max_pending")


async def _decoded(request: web.Request, kind: type[S]) -> S:
    doc = protocol.decode_json(await read_body(request))
    if isinstance(doc, dict):
        protocol.whole_numbers(doc, _COUNTS)
    try:
        return msgspec.convert(doc, type=kind)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None


# -- limits per task type ------------------------------------------------------------------


async def list_limits(request: web.Request) -> web.Response:
    limits = request.app[ORCHESTRATOR].engine.table.limits
    return json_reply({"limits": [lim.view() for _, lim in sorted(limits.items())]})


def _limit_of(request: web.Request) -> Limit:
    task_type = request.match_info["type"]
    found = request.app[ORCHESTRATOR].engine.table.limits.get(task_type)
    if found is None:
        raise NotFoundError(f"task type {task_type!r} has no limit", field="type")
    return found


async def get_limit(request: web.Request) -> web.Response:
    return json_reply(_limit_of(request).view())


async def set_limit(request: web.Request) -> web.Response:
    _admin(request, "setting limits")
    orch, task_type = request.app[ORCHESTRATOR], request.match_info["type"]
    found = limit(task_type, await _decoded(request, LimitSpec))
    await orch.commit_record({"e": "limit", "l": msgspec.to_builtins(found)})
    return json_reply(found.view())


async def remove_limit(request: web.Request) -> web.Response:
    _admin(request, "removing limits")
    found = _limit_of(request)
    await request.app[ORCHESTRATOR].commit_record({"e": "unlimit", "type": found.type})
    return json_reply(found.view())


# -- weights and quotas per user -----------------------------------------------------------


def _user(request: web.Request) -> str:
    name = request.match_info["user"]
    if name != ANY_USER and not _USER_NAME.fullmatch(name):
        raise ValidationError(
            "a user name (letters, digits, . _ -) or * (everyone without a quota)",
            field="user",
        )
    return name


async def list_quotas(request: web.Request) -> web.Response:
    user, quotas = user_of(request), request.app[ORCHESTRATOR].engine.table.quotas
    shown = [
        q.view()
        for name, q in sorted(quotas.items())
        if user.admin or name in (user.name, ANY_USER)
    ]
    return json_reply({"quotas": shown})


def _quota_of(request: web.Request) -> Quota:
    name = _user(request)
    found = request.app[ORCHESTRATOR].engine.table.quotas.get(name)
    if found is None:
        raise NotFoundError(f"user {name!r} has no quota", field="user")
    return found


async def get_quota(request: web.Request) -> web.Response:
    user, name = user_of(request), _user(request)
    if not (user.admin or name in (user.name, ANY_USER)):
        raise ForbiddenError("another user's quota is for admins")
    return json_reply(_quota_of(request).view())


async def set_quota(request: web.Request) -> web.Response:
    _admin(request, "setting quotas")
    orch, name = request.app[ORCHESTRATOR], _user(request)
    quota = (await _decoded(request, QuotaSpec)).quota(name)
    await orch.commit_record({"e": "quota", "q": msgspec.to_builtins(quota)})
    return json_reply(quota.view())


async def remove_quota(request: web.Request) -> web.Response:
    _admin(request, "removing quotas")
    found = _quota_of(request)
    await request.app[ORCHESTRATOR].commit_record({"e": "unquota", "user": found.user})
    return json_reply(found.view())


ROUTES = [
    web.get("/v1/limits", list_limits),
    web.get("/v1/limits/{type}", get_limit),
    web.put("/v1/limits/{type}", set_limit),
    web.delete("/v1/limits/{type}", remove_limit),
    web.get("/v1/quotas", list_quotas),
    web.get("/v1/quotas/{user}", get_quota),
    web.put("/v1/quotas/{user}", set_quota),
    web.delete("/v1/quotas/{user}", remove_quota),
]
