"""Password logins: throttled, one scrypt at a time in a thread, and audited.

Each check runs scrypt (tens of milliseconds of CPU) in a thread, so the event loop, and
with it every heartbeat and request, goes on meanwhile; checks run one at a time, so a
flood of logins queues here rather than taking the CPU the loop needs, and each one sees
the failures recorded before it (:mod:`.throttle`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mutirao.audit import audit
from mutirao.auth import User, password_matches
from mutirao.errors import AuthError, TooManyRequestsError
from mutirao.orchestrator.accounts import Accounts
from mutirao.orchestrator.throttle import LoginThrottle


class Logins:
    def __init__(self, throttle: LoginThrottle, on_refused: Callable[[str], None]) -> None:
        self.throttle = throttle
        self.on_refused = on_refused
        """Called with the reason of each refused login: ``password`` or ``throttled``."""
        self._one_at_a_time = asyncio.Semaphore(1)

    async def check(self, accounts: Accounts, name: str, password: str, address: str) -> User:
        """The user, if ``password`` is right and neither the name nor the address is
        locked out by earlier failures; else TooManyRequestsError or AuthError."""
        async with self._one_at_a_time:
            wait, limit = self.throttle.wait(name, address)
            if wait > 0:
                self.on_refused("throttled")
                audit(
                    "login",
                    f"login as {name!r} from {address} refused: too many failures "
                    f"for this {limit}, {wait:.1f}s to wait",
                    outcome="throttled",
                    level=logging.WARNING,
                    target=name,
                    address=address,
                    reason=f"too many failures for this {limit}",
                )
                raise TooManyRequestsError(
                    f"too many failed logins for this {limit}: try again later",
                    field="username" if limit == "user" else "address",
                    delay=wait,
                )
            user = await self._verify(accounts, name, password)
        if user is None:
            self.throttle.failed(name, address)
            self.on_refused("password")
            audit(
                "login",
                f"login as {name!r} from {address} failed: wrong user name or password",
                outcome="failed",
                level=logging.WARNING,
                target=name,
                address=address,
                reason="wrong user name or password",
            )
            raise AuthError("wrong user name or password", field="password")
        self.throttle.succeeded(name)
        audit("login", f"user {name} logged in from {address}", target=name, address=address)
        return user

    @staticmethod
    async def _verify(accounts: Accounts, name: str, password: str) -> User | None:
        entry = accounts.entry(name)
        salt, digest = (None, None) if entry is None else (entry.salt, entry.hash)
        if not await asyncio.to_thread(password_matches, password, salt, digest):
            return None
        entry = accounts.entry(name)  # it may have changed meanwhile
        if entry is None or (entry.salt, entry.hash) != (salt, digest):
            return None
        return User(name, entry.role)
