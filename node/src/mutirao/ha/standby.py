"""The standby's side of replication: follow the leader's journal, keep the state hot.

The standby installs the leader's snapshot (and its users, token secret and join token),
then applies every batch to its own engine and appends it to its own journal, acknowledging
each LSN once it is on disk here. So at takeover it already has the whole state in memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
import msgspec
import yarl

from mutirao import protocol, tls
from mutirao.errors import ProtocolError
from mutirao.ha.lease import Lease
from mutirao.ha.role import Role
from mutirao.orchestrator.tasks import Snapshot

if TYPE_CHECKING:
    from mutirao.orchestrator.service import Orchestrator

log = logging.getLogger(__name__)


class _Acks:
    """Sends the newest durable LSN to the leader, with the newest beat received (whose
    ``sent`` tells the leader how long our view of its lease holds), coalescing while a send
    is under way. Nothing is acknowledged once this node is no longer a standby: a node
    taking over must not let the old leader count on it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, orch: Orchestrator) -> None:
        self.ws = ws
        self.orch = orch
        self.lsn = -1
        self.beat = 0.0
        self.eligible = False
        self._event = asyncio.Event()
        self.task = asyncio.create_task(self._loop(), name="replica-acks")

    def ack(self, lsn: int) -> None:
        if lsn > self.lsn:
            self.lsn = lsn
            self._event.set()

    def touch(self, sent: float, eligible: bool) -> None:
        """Answer a beat, so the leader knows this standby is still there."""
        self.beat, self.eligible = sent, eligible
        self._event.set()

    async def _loop(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            if self.lsn >= 0 and self.orch.roles.role is Role.STANDBY:
                ack: protocol.ReplicaAckMsg = {
                    "op": "ack",
                    "lsn": self.lsn,
                    "beat": self.beat,
                    "eligible": self.eligible,
                }
                await self.ws.send_bytes(protocol.encode(ack))


def replication_url(leader: str, peer_port: int) -> str:
    """Where the leader at ``leader`` (its API URL) serves replication: on its API port, or
    on the cluster's peer port of the same host."""
    base = yarl.URL(leader.rstrip("/"))
    if peer_port:
        base = base.with_port(peer_port)
    return str(base.with_path(protocol.REPLICATION_WS_PATH))


class Standby:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    async def follow(self, leader: str) -> None:
        """Follow ``leader`` until cancelled, reconnecting as needed."""
        orch = self.orch
        pause = 0.05
        failures = 0
        url = replication_url(leader, orch.settings.ha.peer_port)
        async with tls.http_session(orch.settings.tls) as http:
            while True:
                try:
                    async with http.ws_connect(
                        url,
                        headers={protocol.PEER_TOKEN_HEADER: orch.peer_token},
                        max_msg_size=0,
                    ) as ws:
                        pause, failures = 0.05, 0
                        await self._session(ws, leader)
                except (aiohttp.ClientError, OSError, ProtocolError, TimeoutError) as exc:
                    if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == 401:
                        log.error(
                            "the leader %s refused our peer token: every orchestrator of a "
                            "cluster needs the same one (MUTIRAO_AUTH_PEER_TOKEN)",
                            leader,
                        )
                    failures += 1
                    # Say it once, then only when debugging: a dead leader is retried often.
                    level = logging.INFO if failures == 1 else logging.DEBUG
                    log.log(level, "cannot follow %s: %s", leader, exc or type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, leader: str) -> None:
        orch = self.orch
        await ws.send_bytes(protocol.encode({"op": "follow", "node": orch.node, "url": orch.url}))
        acks = _Acks(ws, orch)
        try:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    break
                await self._on_message(protocol.decode_leader_message(msg.data), acks)
        finally:
            acks.task.cancel()
            await asyncio.gather(acks.task, return_exceptions=True)
        log.warning("replication stream from %s closed (%s)", leader, ws.close_code)

    async def _on_message(self, msg: protocol.LeaderMessage, acks: _Acks) -> None:
        orch = self.orch
        assert orch.journal is not None
        if msg["op"] == "records":
            for record in msg["records"]:
                orch.engine.apply(record)
            orch.lsn = msg["lsn"]
            lsn = msg["lsn"]
            orch.journal.append(msg["records"]).add_done_callback(
                lambda f: acks.ack(lsn) if not f.exception() else None
            )
        elif msg["op"] == "snapshot":
            orch.engine = orch.restore(msgspec.convert(msg["state"], Snapshot), [])
            orch.lsn = msg["lsn"]
            await orch.checkpoint(fresh=True)
            if orch.resyncing:
                orch.resyncing = False
                log.warning("the state lost here is copied back from the leader")
            acks.ack(msg["lsn"])
            log.info(
                "synchronised with the leader at LSN %d, epoch %d: %d task(s)",
                msg["lsn"],
                msg["epoch"],
                len(orch.engine.table.tasks),
            )
        else:
            orch.leader_lsn = msg["lsn"]
            holder = (msg["node"], orch.node) if msg["synced"] else (msg["node"],)
            orch.lease.observe(
                Lease(
                    msg["node"],
                    msg["url"],
                    msg["epoch"],
                    orch.clock(),
                    orch.settings.ha.lease_duration,
                    holder,
                )
            )
            acks.touch(msg["sent"], msg["synced"])
