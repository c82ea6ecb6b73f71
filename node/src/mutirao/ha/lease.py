"""One lease abstraction for leader election, with the decisions kept pure.

A lease names its holder, the holder's URL and an *epoch* that grows by one at every
takeover; every order the holder sends carries the epoch, so anyone who has seen a newer
one can refuse it (fencing). ``synced`` lists the nodes known to hold every acknowledged
record: only those may take over, so a takeover never loses an acknowledged task.

Backends (:class:`LeaseBackend`) store the lease: ``file`` (one machine: a lease record and
``fcntl`` locks on a shared directory), ``peer`` (two machines, no shared disk: the standby
watches the active's heartbeats) and ``kubernetes`` (a ``coordination.k8s.io`` Lease).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True)
class Lease:
    holder: str
    url: str
    epoch: int
    renewed_at: float
    duration: float
    synced: tuple[str, ...] = ()

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.duration

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class LeaseBackend(Protocol):
    """Where the lease lives. Implementations must make ``acquire`` and ``renew`` atomic."""

    shared_record: bool
    """Whether renewals are seen by the other candidates (a record outside this process)."""

    async def read(self) -> Lease | None:
        """The current lease, if any was ever taken."""

    async def acquire(self, node: str, url: str, now: float, epoch_floor: int) -> Lease | None:
        """Take the lease if :func:`may_take` allows it; returns it, or None if not taken.

        ``epoch_floor`` is the newest epoch this node has seen; the new epoch exceeds it.
        """

    async def renew(self, lease: Lease, now: float, synced: Sequence[str]) -> Lease | None:
        """Extend a lease we hold; None means it was lost to someone else."""

    async def release(self, lease: Lease) -> None:
        """Give the lease up at once (clean shutdown), so a standby need not wait."""

    def observe(self, lease: Lease) -> None:
        """What a standby learned of the holder from its replication stream (peer backend)."""

    async def close(self) -> None:
        """Free the backend's resources."""


def may_take(current: Lease | None, node: str, now: float, holder_alive: bool | None) -> bool:
    """Whether ``node`` may take the lease now.

    ``holder_alive`` is what the backend knows beyond the clock: False when it can tell the
    holder is gone (its lock was released), None when it cannot tell.
    """
    if current is None or current.holder == node:
        return True
    if current.synced and node not in current.synced:
        # Taking over would lose records only the holder has; wait for it to come back.
        return False
    return holder_alive is False or current.expired(now)


def next_lease(
    current: Lease | None, node: str, url: str, now: float, *, duration: float, epoch_floor: int
) -> Lease:
    """The lease ``node`` holds after taking over: a strictly newer epoch."""
    epoch = max(current.epoch if current is not None else 0, epoch_floor) + 1
    return Lease(node, url, epoch, now, duration, (node,))


def renewed(lease: Lease, now: float, synced: Sequence[str]) -> Lease:
    return replace(lease, renewed_at=now, synced=tuple(dict.fromkeys([lease.holder, *synced])))


@dataclass
class Tenure:
    """The holder's side of a lease: when to renew, and until when it may acknowledge.

    ``asked_at`` is this node's monotonic clock just before it sent the acquire or renewal
    that returned ``lease``. Nobody saw that write earlier, so nobody may take over before
    ``asked_at + duration``; the holder stops acknowledging ``margin`` seconds before that
    (given clocks that advance at the same rate). A monotonic clock keeps running while the
    process is paused (SIGSTOP, a VM or GC stall), so after a long pause the deadline is
    already behind it, whatever the backend said before the pause.
    """

    lease: Lease
    asked_at: float
    renew_interval: float
    margin: float

    @property
    def deadline(self) -> float:
        return self.asked_at + self.lease.duration - self.margin

    def renew_due(self, now: float) -> bool:
        return now >= self.asked_at + self.renew_interval

    def lapsed(self, now: float) -> bool:
        return now >= self.deadline

    def renewed(self, lease: Lease, asked_at: float) -> None:
        self.lease = lease
        self.asked_at = asked_at
