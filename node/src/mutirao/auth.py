"""Users, passwords and tokens.

Passwords are stored as scrypt hashes in a JSON users file (``mutirao user add``). Login
returns a bearer token ``<base64 claims>.<base64 HMAC-SHA256>`` signed with a secret kept
in the orchestrator's data dir, so any orchestrator sharing that dir (or a copy of the
secret) accepts it. Workers authenticate separately, with the cluster's join token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from mutirao.errors import AuthError, ConflictError, ValidationError
from mutirao.private import write_private

USERS_FILE = "users.json"
SECRET_FILE = "token.secret"
JOIN_TOKEN_FILE = "join.token"

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class User:
    name: str
    admin: bool


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)


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
    """The users file: ``{name: {salt, hash, admin}}`` with hex-encoded bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, object]]:
        if not self.path.exists():
            return {}
        data: dict[str, dict[str, object]] = orjson.loads(self.path.read_bytes())
        return data

    def add(self, name: str, password: str, *, admin: bool = False, replace: bool = False) -> User:
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValidationError(
                "user name must be letters, digits, '-', '_' or '.'", field="name"
            )
        if len(password) < 8:
            raise ValidationError("password must have at least 8 characters", field="password")
        users = self._load()
        if name in users and not replace:
            raise ConflictError(f"user {name!r} already exists", field="name")
        salt = os.urandom(16)
        users[name] = {"salt": salt.hex(), "hash": _hash(password, salt).hex(), "admin": admin}
        write_private(self.path, [orjson.dumps(users, option=orjson.OPT_INDENT_2)])
        return User(name, admin)

    def verify(self, name: str, password: str) -> User:
        entry = self._load().get(name)
        if entry is None:
            # Hash anyway so a wrong user name costs as much time as a wrong password.
            _hash(password, b"0" * 16)
            raise AuthError("wrong user name or password")
        salt = bytes.fromhex(str(entry["salt"]))
        if not hmac.compare_digest(_hash(password, salt), bytes.fromhex(str(entry["hash"]))):
            raise AuthError("wrong user name or password")
        return User(name, bool(entry["admin"]))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    _CACHE_SIZE = 1024

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._verified: dict[str, tuple[User, float]] = {}
        """Tokens whose signature checked out, with their expiry: a client sends the same
        token with every request, and checking it again costs more than the lookup."""

    def _sign(self, body: bytes) -> str:
        return _b64(hmac.new(self._key, body, hashlib.sha256).digest())

    def issue(self, user: User, now: float, ttl: float) -> str:
        body = orjson.dumps({"sub": user.name, "adm": user.admin, "exp": now + ttl})
        return f"{_b64(body)}.{self._sign(body)}"

    def verify(self, token: str, now: float) -> User:
        known = self._verified.get(token)
        if known is not None and known[1] >= now:
            return known[0]
        user, expires = self._check(token, now)
        if len(self._verified) >= self._CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (user, expires)
        return user

    def _check(self, token: str, now: float) -> tuple[User, float]:
        try:
            body_text, signature = token.split(".", 1)
            body = _unb64(body_text)
        except ValueError:
            raise AuthError("malformed token") from None
        if not signature.isascii() or not hmac.compare_digest(self._sign(body), signature):
            raise AuthError("invalid token signature")
        claims = orjson.loads(body)
        if claims["exp"] < now:
            raise AuthError("token expired: log in again")
        return User(claims["sub"], bool(claims["adm"])), claims["exp"]
