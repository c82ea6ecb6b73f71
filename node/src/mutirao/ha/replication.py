"""Journal replication from the active orchestrator to its standbys.

Active side (:class:`Hub`): a standby connects to ``/v1/replication``; the hub sends it a
snapshot of the whole state, then every journal batch as it is appended (``records`` with
the batch's log sequence number, LSN), and a ``beat`` every heartbeat interval. The standby
stores each batch durably and acknowledges its LSN. While a standby is subscribed,
:meth:`Hub.wait` makes the active's acknowledgements wait for it (synchronous replication).
When a standby drops, its waiters stay blocked until the caller has recorded in the lease
that the standby is no longer in sync (:meth:`Hub.forget`), so a takeover by a standby that
missed records is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mutirao.ha.witness import Witness
from mutirao.orchestrator.links import Link

log = logging.getLogger(__name__)


@dataclass
class Replica:
    node: str
    url: str
    link: Link
    snapshot_lsn: int
    acked: int = -1
    leaving: bool = False
    last_heard: float = 0.0
    """When the standby last answered (it acknowledges every beat)."""

    @property
    def synced(self) -> bool:
        """It holds the snapshot, and every later batch is waited for."""
        return self.acked >= self.snapshot_lsn and not self.leaving


@dataclass
class Hub:
    replicas: dict[str, Replica] = field(default_factory=dict)
    witness: Witness = field(default_factory=Witness)
    _waiters: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)

    def subscribe(self, replica: Replica) -> None:
        old = self.replicas.get(replica.node)
        if old is not None:
            old.leaving = True
        self.replicas[replica.node] = replica

    def publish(self, lsn: int, records: list[dict[str, Any]]) -> None:
        for replica in self.replicas.values():
            if not replica.leaving:
                replica.link.send({"op": "records", "lsn": lsn, "records": records})

    def beat(self, epoch: int, lsn: int, node: str, url: str, sent: float) -> None:
        """``sent``: our monotonic clock, echoed back in acks (see :mod:`.witness`)."""
        for replica in self.replicas.values():
            if not replica.leaving:
                self.witness.sent(replica.node, sent, replica.synced)
                replica.link.send(
                    {
                        "op": "beat",
                        "node": node,
                        "url": url,
                        "epoch": epoch,
                        "lsn": lsn,
                        "synced": replica.synced,
                        "sent": sent,
                    }
                )

    def wait(self, lsn: int) -> asyncio.Future[None]:
        """Resolves once every subscribed standby has stored batch ``lsn``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._satisfied(lsn):
            future.set_result(None)
        else:
            self._waiters.append((lsn, future))
        return future

    def _satisfied(self, lsn: int) -> bool:
        return all(r.acked >= lsn for r in self.replicas.values())

    def _release(self) -> None:
        while self._waiters and self._satisfied(self._waiters[0][0]):
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    def ack(
        self, node: str, lsn: int, now: float, beat: float = float("-inf"), eligible: bool = False
    ) -> None:
        """``node`` stored batch ``lsn``; it last heard the beat sent at ``beat``, which made
        it ``eligible`` to take over or not (see :mod:`.witness`)."""
        replica = self.replicas.get(node)
        if replica is not None:
            replica.last_heard = now
            self.witness.confirmed(node, beat, eligible)
        if replica is not None and lsn > replica.acked:
            became_synced = not replica.synced
            replica.acked = lsn
            if became_synced and replica.synced:
                log.info("standby %s is in sync at LSN %d", node, lsn)
            self._release()

    def leaving(self, node: str, replica: Replica) -> None:
        """The standby dropped: stop sending, but keep its waiters until :meth:`forget`."""
        if self.replicas.get(node) is replica:
            replica.leaving = True

    def forget(self, node: str, replica: Replica) -> None:
        """The lease no longer counts the standby as synced: release what waited for it."""
        if self.replicas.get(node) is replica:
            del self.replicas[node]
        self._release()

    def silent(self, now: float, limit: float) -> list[Replica]:
        """Standbys that answered nothing for ``limit`` seconds (a cut link, a hung process)."""
        return [r for r in self.replicas.values() if not r.leaving and now - r.last_heard > limit]

    def synced(self) -> list[str]:
        return sorted(r.node for r in self.replicas.values() if r.synced)

    def lag(self, lsn: int) -> dict[str, int]:
        return {r.node: max(0, lsn - r.acked) for r in self.replicas.values()}

    def fail_all(self) -> None:
        """Stepping down: nothing more will be acknowledged by this node."""
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(ConnectionError("this orchestrator stepped down"))
