"""Users, token revocations and the cluster's secrets as journaled state (sans-IO).

Like tasks, this state changes only by records, so it is replicated to the standbys,
checkpointed and replayed with everything else: a user added a second ago can log in on
the new leader after a failover, and a revoked token stays revoked there.

Records (``e`` is the kind):

- ``user``: ``name`` with ``role``, password ``salt`` and ``hash`` (hex) and ``since``:
  login tokens issued before ``since`` are refused (a password change, "sign out
  everywhere"); adding, changing and re-adding a user all write this record whole
- ``unuser``: ``name`` is removed (its tokens stop working with it)
- ``revoke``: the login session ``jti`` (its access and refresh tokens) is refused until
  it would have expired (``exp``); entries past their expiry at ``at`` are dropped
- ``secrets``: the ``token_secret`` that signs tokens and the workers' ``join_token``

The commands below validate and return a record; the caller applies and journals it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mutirao.auth import ADMIN, Claims, User, check_name, check_role
from mutirao.errors import AuthError, ConflictError, NotFoundError
from mutirao.protocol import UserView

Record = dict[str, Any]

KINDS = frozenset({"user", "unuser", "revoke", "secrets"})


class UserEntry(msgspec.Struct):
    role: str
    salt: str
    hash: str
    since: float = 0.0


class AccountsState(msgspec.Struct):
    users: dict[str, UserEntry] = {}
    revoked: dict[str, float] = {}
    """Revoked login sessions, with when their tokens would have expired anyway."""
    token_secret: str = ""
    join_token: str = ""


class Accounts:
    def __init__(self, state: AccountsState | None = None) -> None:
        self.state = state if state is not None else AccountsState()

    def apply(self, record: Record) -> None:
        kind, state = record["e"], self.state
        if kind == "user":
            state.users[record["name"]] = UserEntry(
                record["role"], record["salt"], record["hash"], record["since"]
            )
        elif kind == "unuser":
            state.users.pop(record["name"], None)
        elif kind == "revoke":
            at = record["at"]
            state.revoked = {jti: exp for jti, exp in state.revoked.items() if exp >= at}
            state.revoked[record["jti"]] = record["exp"]
        elif kind == "secrets":
            state.token_secret, state.join_token = record["token_secret"], record["join_token"]
        else:
            raise ValueError(f"unknown accounts record kind {kind!r}")

    # -- reading ---------------------------------------------------------------------------

    def entry(self, name: str) -> UserEntry | None:
        return self.state.users.get(name)

    def authenticate(self, claims: Claims) -> User:
        """The user a token stands for now (its current role), or AuthError: removed,
        signed out, or its password changed since the token was issued."""
        if claims.minted:
            return claims.user
        name = claims.user.name
        entry = self.state.users.get(name)
        if entry is None:
            raise AuthError(f"user {name!r} no longer exists")
        if claims.issued < entry.since or claims.token_id in self.state.revoked:
            raise AuthError("token revoked: log in again")
        if entry.role == claims.user.role:
            return claims.user
        return User(name, entry.role)

    def view(self, name: str) -> UserView:
        entry = self.state.users.get(name)
        if entry is None:
            raise NotFoundError(f"no user {name!r}", field="name")
        return {"name": name, "role": entry.role, "admin": entry.role == ADMIN}

    def views(self) -> list[UserView]:
        return [self.view(name) for name in sorted(self.state.users)]

    # -- commands --------------------------------------------------------------------------

    def check_new(self, name: str, role: str) -> None:
        check_name(name)
        check_role(role)
        if name in self.state.users:
            raise ConflictError(f"user {name!r} already exists", field="name")

    def add(self, name: str, role: str, salt: str, digest: str, now: float) -> Record:
        self.check_new(name, role)
        return _user(name, role, salt, digest, now)

    def check_change(self, name: str, role: str | None) -> UserEntry:
        entry = self._existing(name)
        if role is not None:
            check_role(role)
            if role != ADMIN:
                self._keep_an_admin(name)
        return entry

    def change(
        self,
        name: str,
        now: float,
        *,
        role: str | None = None,
        password: tuple[str, str] | None = None,
        sign_out: bool = False,
    ) -> Record:
        """A new role, a new password (which signs the user out everywhere), or only
        ``sign_out``: revoke every token issued until now."""
        entry = self.check_change(name, role)
        salt, digest = password if password is not None else (entry.salt, entry.hash)
        since = now if password is not None or sign_out else entry.since
        return _user(name, role or entry.role, salt, digest, since)

    def remove(self, name: str) -> Record:
        self._existing(name)
        self._keep_an_admin(name)
        return {"e": "unuser", "name": name}

    def revoke(self, session: str, until: float, now: float) -> Record:
        """Revoke one login session (a logout) until ``until``, past which none of its
        tokens would be valid anyway."""
        return {"e": "revoke", "jti": session, "exp": until, "at": now}

    def secrets(self, token_secret: str, join_token: str) -> Record | None:
        """The record that sets these secrets, or None if they are set already."""
        if (self.state.token_secret, self.state.join_token) == (token_secret, join_token):
            return None
        return {"e": "secrets", "token_secret": token_secret, "join_token": join_token}

    def _existing(self, name: str) -> UserEntry:
        entry = self.state.users.get(name)
        if entry is None:
            raise NotFoundError(f"no user {name!r}", field="name")
        return entry

    def _keep_an_admin(self, name: str) -> None:
        """Refuse to remove or demote the last admin: nobody could manage users then."""
        users = self.state.users
        if users[name].role == ADMIN and sum(e.role == ADMIN for e in users.values()) == 1:
            raise ConflictError(
                f"{name!r} is the only admin: make another admin first", field="name"
            )


def _user(name: str, role: str, salt: str, digest: str, since: float) -> Record:
    return {"e": "user", "name": name, "role": role, "salt": salt, "hash": digest, "since": since}
