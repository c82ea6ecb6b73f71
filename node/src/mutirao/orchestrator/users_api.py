"""Login, refresh, logout and user administration over HTTP (``/v1/login``, ``/v1/users``).

Every change is an accounts record (:mod:`mutirao.orchestrator.accounts`) committed like a
task: acknowledged once durable on this node and its standbys, so it holds after a
failover. Password hashing (scrypt, tens of milliseconds) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from mutirao import protocol
from mutirao.audit import audit
from mutirao.auth import ADMIN, SUBMITTER, User, check_role, hash_password, new_session
from mutirao.errors import AuthError, ForbiddenError, ValidationError
from mutirao.orchestrator.reply import json_reply, user_of
from mutirao.orchestrator.service import ORCHESTRATOR, Orchestrator
from mutirao.serving import read_body


async def _object(request: web.Request) -> dict[str, Any]:
    doc = protocol.decode_json(await read_body(request))
    if not isinstance(doc, dict):
        raise ValidationError("expected a JSON object", field="body")
    return doc


def _string(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string", field=name)
    return value


def _role(doc: dict[str, Any]) -> str | None:
    """``role``, or the shorthand ``"admin": true|false``."""
    admin = doc.get("admin")
    if admin is not None and not isinstance(admin, bool):
        raise ValidationError("admin must be true or false", field="admin")
    if "role" in doc:
        return check_role(doc["role"])
    if admin is None:
        return None
    return ADMIN if admin else SUBMITTER


def _admin(request: web.Request) -> User:
    user = user_of(request)
    if not user.admin:
        raise ForbiddenError("managing users is for admins")
    return user


def _admin_or_self(request: web.Request) -> tuple[User, str]:
    user, name = user_of(request), request.match_info["name"]
    if not user.admin and user.name != name:
        raise ForbiddenError("only an admin manages other users")
    return user, name


def _audit(request: web.Request, event: str, message: str, by: User, target: str) -> None:
    audit(
        event,
        message,
        level=logging.WARNING,
        actor=by.name,
        target=target,
        address=_address(request),
    )


async def _password(doc: dict[str, Any]) -> tuple[str, str]:
    return await asyncio.to_thread(hash_password, _string(doc, "password"))


def _tokens(orch: Orchestrator, user: User, session: str) -> dict[str, Any]:
    now, ttl = orch.clock(), orch.settings.auth.token_ttl
    return {
        "token": orch.signer.issue(user, now, ttl, session),
        "user": user.name,
        "role": user.role,
        "admin": user.admin,
        "expires_at": now + ttl,
    }


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def login(request: web.Request) -> web.Response:
    """A new session: an access token and the refresh token that renews it."""
    orch = request.app[ORCHESTRATOR]
    doc = await _object(request)
    name, password = _string(doc, "username"), _string(doc, "password")
    user = await orch.logins.check(orch.accounts, name, password, _address(request))
    session, now, ttl = new_session(), orch.clock(), orch.settings.auth.refresh_ttl
    body = _tokens(orch, user, session)
    body["refresh_token"] = orch.signer.issue(user, now, ttl, session, refresh=True)
    body["refresh_expires_at"] = now + ttl
    return json_reply(body)


async def refresh(request: web.Request) -> web.Response:
    """``{"refresh_token"}``: a new access token of the same session, for the user as the
    cluster knows them now (refused once removed, signed out or logged out)."""
    orch = request.app[ORCHESTRATOR]
    doc = await _object(request)
    claims = orch.signer.verify(_string(doc, "refresh_token"), orch.clock())
    if not claims.refresh or claims.token_id is None:
        raise AuthError("not a refresh token", field="refresh_token")
    user = orch.accounts.authenticate(claims)
    return json_reply(_tokens(orch, user, claims.token_id))


async def logout(request: web.Request) -> web.Response:
    """Revoke the session of the token this request came with (its refresh token too)."""
    orch = request.app[ORCHESTRATOR]
    header = request.headers["Authorization"]
    claims = orch.signer.verify(header[7:].strip(), orch.clock())
    if claims.token_id is None:
        raise ValidationError(
            "a token minted with the cluster's secret cannot be revoked (rotate the secret)",
            field="Authorization",
        )
    now = orch.clock()
    until = now + orch.settings.auth.refresh_ttl  # no token of the session outlives this
    await orch.commit_record(orch.accounts.revoke(claims.token_id, until, now))
    name = claims.user.name
    audit("logout", f"user {name} logged out", actor=name, address=_address(request))
    return json_reply({"user": name, "revoked": True})


async def list_users(request: web.Request) -> web.Response:
    _admin(request)
    return json_reply({"users": request.app[ORCHESTRATOR].accounts.views()})


async def add_user(request: web.Request) -> web.Response:
    orch, by = request.app[ORCHESTRATOR], _admin(request)
    doc = await _object(request)
    name, role = _string(doc, "name"), _role(doc) or SUBMITTER
    orch.accounts.check_new(name, role)  # before the slow hash
    salt, digest = await _password(doc)
    await orch.commit_record(orch.accounts.add(name, role, salt, digest, orch.clock()))
    _audit(request, "user.add", f"user {name} added with role {role} by {by.name}", by, name)
    return json_reply(orch.accounts.view(name), 201)


async def get_user(request: web.Request) -> web.Response:
    _, name = _admin_or_self(request)
    return json_reply(request.app[ORCHESTRATOR].accounts.view(name))


async def change_user(request: web.Request) -> web.Response:
    """A new ``password`` (self or admin; it signs the user out everywhere) or ``role``
    (admin)."""
    orch = request.app[ORCHESTRATOR]
    by, name = _admin_or_self(request)
    doc = await _object(request)
    role = _role(doc)
    if role is not None and not by.admin:
        raise ForbiddenError("only an admin changes roles", field="role")
    if role is None and "password" not in doc:
        raise ValidationError("nothing to change: give password or role", field="body")
    orch.accounts.check_change(name, role)  # before the slow hash
    password = await _password(doc) if "password" in doc else None
    await orch.commit_record(orch.accounts.change(name, orch.clock(), role=role, password=password))
    what = " and ".join(w for w, v in (("password", password), ("role", role)) if v)
    _audit(request, "user.change", f"user {name}: {what} changed by {by.name}", by, name)
    return json_reply(orch.accounts.view(name))


async def remove_user(request: web.Request) -> web.Response:
    orch, by = request.app[ORCHESTRATOR], _admin(request)
    name = request.match_info["name"]
    await orch.commit_record(orch.accounts.remove(name))
    _audit(request, "user.remove", f"user {name} removed by {by.name}", by, name)
    return json_reply({"name": name, "removed": True})


async def sign_out(request: web.Request) -> web.Response:
    """Revoke every login token of the user issued until now."""
    orch = request.app[ORCHESTRATOR]
    by, name = _admin_or_self(request)
    await orch.commit_record(orch.accounts.change(name, orch.clock(), sign_out=True))
    _audit(request, "user.revoke", f"every token of user {name} revoked by {by.name}", by, name)
    return json_reply({"name": name, "revoked": True})


ROUTES = [
    web.post("/v1/login", login),
    web.post("/v1/refresh", refresh),
    web.post("/v1/logout", logout),
    web.get("/v1/users", list_users),
    web.post("/v1/users", add_user),
    web.get("/v1/users/{name}", get_user),
    web.patch("/v1/users/{name}", change_user),
    web.delete("/v1/users/{name}", remove_user),
    web.post("/v1/users/{name}/revoke", sign_out),
]
