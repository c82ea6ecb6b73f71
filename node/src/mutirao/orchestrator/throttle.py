"""Login throttling by user name and by client address (sans-IO, on an injected clock).

Each key may fail ``free`` times in a row; every failure after that locks it for a time
that doubles (1 s, 2 s, 4 s ... up to ``max_lock``), so guessing one password, or many
users' passwords from one address, slows to a crawl while an honest typo costs nothing.
A success clears the user's count (not the address's: one account of its own must not
let an address reset its guesses at others). Keys quiet for ``forget`` seconds are
dropped, and at most ``capacity`` keys are kept (the oldest go first), so a flood of made-up
names cannot fill the memory.

The counts live in the leader's memory, not the journal: a failover starts them afresh,
which costs an attacker one lease duration per reset at best.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Strikes:
    failures: int = 0
    until: float = 0.0
    """Attempts are refused before this time."""
    last: float = 0.0


class _Counter:
    def __init__(self, free: int, max_lock: float, forget: float, capacity: int) -> None:
        self.free, self.max_lock, self.forget, self.capacity = free, max_lock, forget, capacity
        self._keys: dict[str, _Strikes] = {}

    def wait(self, key: str, now: float) -> float:
        strikes = self._keys.get(key)
        if strikes is None:
            return 0.0
        if now - strikes.last > self.forget:
            del self._keys[key]
            return 0.0
        return max(0.0, strikes.until - now)

    def failed(self, key: str, now: float) -> None:
        strikes = self._keys.pop(key, None)  # re-inserted last: the dict stays oldest-first
        if strikes is None or now - strikes.last > self.forget:
            strikes = _Strikes()
        strikes.failures += 1
        strikes.last = now
        beyond = strikes.failures - self.free
        if beyond > 0:
            strikes.until = now + min(self.max_lock, 2.0 ** (beyond - 1))
        self._keys[key] = strikes
        while len(self._keys) > self.capacity:
            del self._keys[next(iter(self._keys))]

    def clear(self, key: str) -> None:
        self._keys.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        *,
        free_per_user: int = 5,
        free_per_address: int = 20,
        max_lock: float = 300.0,
        forget: float = 900.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self._users = _Counter(free_per_user, max_lock, forget, capacity)
        self._addresses = _Counter(free_per_address, max_lock, forget, capacity)

    def wait(self, user: str, address: str) -> tuple[float, str]:
        """Seconds before ``user`` may try again from ``address`` (0: now), and which
        limit holds it (``"user"`` or ``"address"``)."""
        now = self.clock()
        by_user, by_address = self._users.wait(user, now), self._addresses.wait(address, now)
        return (by_user, "user") if by_user >= by_address else (by_address, "address")

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        self._users.failed(user, now)
        self._addresses.failed(address, now)

    def succeeded(self, user: str) -> None:
        self._users.clear(user)
