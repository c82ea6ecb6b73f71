"""Passwords, roles and signed bearer tokens.

The cluster's users live in its journal (:mod:`mutirao.orchestrator.accounts`); this module
holds what both that state and the clients need: scrypt password hashes, the roles, and
tokens ``<base64 claims>.<base64 HMAC-SHA256>`` signed with the cluster's token secret.

A login opens a *session*: a short-lived access token, and a refresh token that buys new
access tokens (``/v1/refresh``) until it expires. Both name the user, when they were issued
and the session's id; the orchestrator checks them against the current user record
(removed, demoted, signed out) and the revoked sessions, so a revocation takes effect at
once. A token *minted* offline by a holder of the secret (the
operator, ``mutirao up`` for its banner) is marked so and trusted on its claims: whoever
has the key could sign anything anyway.

``UserStore`` is the bootstrap file (``mutirao user add --data-dir``): an orchestrator that
takes the lead of a cluster with no users yet imports it into the journal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mutirao.errors import AuthError, ConflictError, ValidationError
from mutirao.private import write_private

USERS_FILE = "users.json"
SECRET_FILE = "token.secret"
JOIN_TOKEN_FILE = "join.token"
PEER_TOKEN_FILE = "peer.token"

ADMIN, SUBMITTER, VIEWER = "admin", "submitter", "viewer"
ROLES = (ADMIN, SUBMITTER, VIEWER)
"""An admin sees every task and manages users; a submitter submits and sees its own tasks;
a viewer only reads its own."""

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str = SUBMITTER

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    @property
    def may_submit(self) -> bool:
        return self.role != VIEWER


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token with a valid signature says."""

    user: User
    expires: float
    issued: float = 0.0
    token_id: str | None = None
    """The session id of login tokens (what a logout revokes); None on minted ones."""
    refresh: bool = False
    """A refresh token: good only for ``/v1/refresh``, not as a bearer token."""

    @property
    def minted(self) -> bool:
        return self.token_id is None


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)


def check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 64
        or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        or not name.isascii()
    ):
        raise ValidationError(
            "user name must be 1-64 ASCII letters, digits, '-', '_' or '.'", field="name"
        )
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}", field="role")
    return str(role)


def hash_password(password: str) -> tuple[str, str]:
    """``(salt, hash)`` in hex for a new password (slow on purpose: call it off the loop)."""
    if len(password) < MIN_PASSWORD:
        raise ValidationError(
            f"password must have at least {MIN_PASSWORD} characters", field="password"
        )
    salt = os.urandom(16)
    return salt.hex(), _hash(password, salt).hex()


def password_matches(password: str, salt: str | None, digest: str | None) -> bool:
    """Whether ``password`` has this salt and hash; with none (an unknown user) it hashes
    anyway, so a wrong user name costs as much time as a wrong password."""
    if salt is None or digest is None:
        _hash(password, b"0" * 16)
        return False
    return hmac.compare_digest(_hash(password, bytes.fromhex(salt)), bytes.fromhex(digest))


def read_or_create_secret(path: Path, make: int = 32, *, given: str = "") -> str:
    """A secret kept in a private file, created on first use; ``given`` (from the settings)
    replaces whatever the file held."""
    if given:
        if not path.exists() or path.read_text().strip() != given:
            write_private(path, [given.encode()])
        return given
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(make)
    write_private(path, [value.encode()])
    return value


class UserStore:
    """The bootstrap users file: ``{name: {salt, hash, role}}`` (hex-encoded bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[str, dict[str, Any]]:
        """Each user's ``salt``, ``hash`` and ``role`` (an older file's ``admin`` flag read
        as a role)."""
        if not self.path.exists():
            return {}
        data: dict[str, dict[str, Any]] = orjson.loads(self.path.read_bytes())
        for entry in data.values():
            if "role" not in entry:
                entry["role"] = ADMIN if entry.pop("admin", False) else SUBMITTER
        return data

    def add(
        self, name: str, password: str, *, role: str = SUBMITTER, replace: bool = False
    ) -> User:
        check_name(name)
        check_role(role)
        users = self.entries()
        if name in users and not replace:
            raise ConflictError(f"user {name!r} already exists", field="name")
        salt, digest = hash_password(password)
        users[name] = {"salt": salt, "hash": digest, "role": role}
        write_private(self.path, [orjson.dumps(users, option=orjson.OPT_INDENT_2)])
        return User(name, role)

    def verify(self, name: str, password: str) -> User:
        entry = self.entries().get(name, {})
        if not password_matches(password, entry.get("salt"), entry.get("hash")):
            raise AuthError("wrong user name or password", field="password")
        return User(name, entry["role"])


def new_session() -> str:
    """A fresh session id: the ``jti`` of a login's access and refresh tokens."""
    return secrets.token_urlsafe(12)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    _CACHE_SIZE = 1024

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._key = secret.encode()
        self._verified: dict[str, Claims] = {}
        """Tokens whose signature checked out: a client sends the same token with every
        request, and checking it again costs more than the lookup."""

    def _sign(self, body: bytes) -> str:
        return _b64(hmac.new(self._key, body, hashlib.sha256).digest())

    def _token(self, claims: dict[str, Any]) -> str:
        body = orjson.dumps(claims)
        return f"{_b64(body)}.{self._sign(body)}"

    def issue(
        self, user: User, now: float, ttl: float, session: str, *, refresh: bool = False
    ) -> str:
        """A login token of ``session`` (see :func:`new_session`), checked against the user
        record on every use: an access token, or the refresh token that buys them."""
        claims: dict[str, Any] = {
            "sub": user.name,
            "role": user.role,
            "iat": now,
            "exp": now + ttl,
            "jti": session,
        }
        if refresh:
            claims["typ"] = "refresh"
        return self._token(claims)

    def mint(self, user: User, now: float, ttl: float) -> str:
        """A token for a key holder's own use (a service, a test): trusted on its claims."""
        return self._token({"sub": user.name, "role": user.role, "exp": now + ttl, "svc": 1})

    def verify(self, token: str, now: float) -> Claims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check(token)
            if len(self._verified) >= self._CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        if claims.expires < now:
            raise AuthError("token expired: refresh it or log in again", expired=True)
        return claims

    def _check(self, token: str) -> Claims:
        try:
            body_text, signature = token.split(".", 1)
            body = _unb64(body_text)
        except ValueError:
            raise AuthError("malformed token") from None
        if not signature.isascii() or not hmac.compare_digest(self._sign(body), signature):
            raise AuthError("invalid token signature")
        claims = orjson.loads(body)
        role = claims.get("role")
        if role not in ROLES or not (claims.get("svc") or claims.get("jti")):
            raise AuthError("token from an older version: log in again")
        user = User(claims["sub"], role)
        if claims.get("svc"):
            return Claims(user, claims["exp"])
        refresh = claims.get("typ") == "refresh"
        return Claims(user, claims["exp"], claims["iat"], claims["jti"], refresh)
