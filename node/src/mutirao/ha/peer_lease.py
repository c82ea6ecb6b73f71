"""The ``peer`` lease backend: two (or more) machines and no shared disk.

There is no shared record: a standby's view of the lease is what the active's replication
stream tells it (``observe``), renewed by every beat. When the beats stop for the lease
duration the standby takes over with the next epoch, if the active last counted it as in
sync. The active "renews" by asking its peers (``GET /v1/ha``) whether one of them leads
with a newer epoch, and steps down if so; unreachable peers do not stop it.

Two nodes cut off from each other can both lead for a while: fencing by epoch at the
workers, and the deposed side stepping down and resynchronising when it hears of the newer
epoch, keep a task from being recorded twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aiohttp

from mutirao.ha.lease import Lease, may_take, next_lease, renewed
from mutirao.protocol import HA_PATH, HaView
from mutirao.settings import TlsSettings
from mutirao.tls import http_session

log = logging.getLogger(__name__)


class PeerLease:
    shared_record = False
    """No record outside this process: a standby that drops may still be alive and take
    over after one lease duration, so the active waits that long before going on alone."""

    def __init__(
        self, node: str, peers: Sequence[str], duration: float, tls: TlsSettings | None = None
    ) -> None:
        self.node = node
        self.tls = tls or TlsSettings()
        self.peers = [p.rstrip("/") for p in peers]
        self.duration = duration
        self._view: Lease | None = None
        self._started = time.time()
        self._http: aiohttp.ClientSession | None = None

    def observe(self, lease: Lease) -> None:
        self._view = lease

    async def _views(self) -> list[HaView]:
        if self._http is None:
            self._http = http_session(self.tls, timeout=aiohttp.ClientTimeout(total=0.5))

        async def ask(peer: str) -> HaView | None:
            assert self._http is not None
            try:
                async with self._http.get(peer + HA_PATH) as resp:
                    view: HaView = await resp.json()
                    return view if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None

        answers = await asyncio.gather(*(ask(p) for p in self.peers))
        return [
            a for a in answers if isinstance(a, dict) and a.get("node") not in (None, self.node)
        ]

    async def read(self) -> Lease | None:
        now = time.time()
        if self._view is not None and not self._view.expired(now):
            return self._view
        known = self._view.epoch if self._view is not None else 0
        actives = [v for v in await self._views() if v["role"] == "active"]
        # A deposed node may still claim to lead for a moment: trust the newest epoch only.
        for view in sorted(actives, key=lambda v: -v["epoch"]):
            if view["epoch"] >= known:
                # Polling says who leads, not that this node holds its records: only beats
                # (``observe``) can make it eligible to take over.
                synced = (view["node"],)
                self._view = Lease(
                    view["node"], view["url"], view["epoch"], now, self.duration, synced
                )
                return self._view
        return self._view

    async def acquire(self, node: str, url: str, now: float, epoch_floor: int) -> Lease | None:
        current = await self.read()
        if current is None:
            # Cold start: nobody leads. Wait one lease duration for an active to show up,
            # then the candidate with the smallest id among those that answer takes it.
            if now - self._started < self.duration:
                return None
            rivals = await self._views()
            if any(v["role"] == "active" or v["node"] < node for v in rivals):
                return None
            epoch_floor = max([epoch_floor, *(v["epoch"] for v in rivals)])
        elif current.holder != node and not may_take(current, node, now, None):
            return None
        lease = next_lease(current, node, url, now, duration=self.duration, epoch_floor=epoch_floor)
        self._view = lease
        return lease

    async def renew(self, lease: Lease, now: float, synced: Sequence[str]) -> Lease | None:
        for view in await self._views():
            if view["role"] == "active" and view["epoch"] > lease.epoch:
                log.warning(
                    "peer %s leads with epoch %d > %d", view["node"], view["epoch"], lease.epoch
                )
                self._view = Lease(
                    view["node"], view["url"], view["epoch"], now, self.duration, (view["node"],)
                )
                return None
        return renewed(lease, now, synced)

    async def release(self, lease: Lease) -> None:
        """Nothing shared to release: the standby sees the stream close and waits it out."""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
