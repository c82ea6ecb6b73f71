"""Which role an orchestrator plays, and the duties of each.

Every orchestrator runs the same loop: as a *standby* it follows whoever holds the lease
(receiving its journal, see :mod:`mutirao.ha.standby`) while trying to take the lease; once
it holds the lease it is *active*: it records the new epoch, calls every known worker over,
renews the lease, streams its journal to standbys, and steps down (back to standby) when the
lease is lost, cannot be renewed in time, or anyone shows it a newer epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from mutirao import protocol
from mutirao.errors import AuthError, ProtocolError
from mutirao.ha.lease import Lease, Tenure
from mutirao.ha.replication import Replica
from mutirao.ha.standby import Standby
from mutirao.orchestrator.links import Link
from mutirao.orchestrator.service import Orchestrator, Role

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.ha = orch.settings.ha
        self.tenure: Tenure | None = None
        self._renewing = asyncio.Lock()
        self.last_seen_lease: Lease | None = None
        """The lease as last read while standing by: whom a takeover replaces."""

    async def run(self) -> None:
        orch = self.orch
        if orch.engine.epoch:
            # What the journal says about the last leader, for backends with no shared record:
            # only that leader may lead again without first hearing from the others.
            table = orch.engine.table
            orch.lease.observe(
                Lease(table.leader, "", table.epoch, 0.0, self.ha.lease_duration, (table.leader,))
            )
        while True:
            try:
                lease = await self._stand_by()
                await self._lead(lease)
            except (OSError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
                # A bug or a broken disk must not leave the process serving with no role.
                log.exception("role loop failed (%s); standing by again", exc)
                orch.step_down(f"role loop failed: {exc}")
                await asyncio.sleep(self.ha.retry_interval)

    async def shutdown(self, held: Lease | None) -> None:
        """Clean stop: close every link, then hand the lease over at once instead of letting
        it expire, so the standby takes over at its next poll."""
        orch = self.orch
        await orch.close_links(1001, "orchestrator shutting down")
        for replica in list(orch.hub.replicas.values()):
            await replica.link.close(1001, "orchestrator shutting down")
        if held is not None:
            with contextlib.suppress(OSError, aiohttp.ClientError):
                await orch.lease.release(held)
            log.warning("released the lease (epoch %d) for the standby to take over", held.epoch)
        await orch.lease.close()

    # -- standby ---------------------------------------------------------------------------

    async def _stand_by(self) -> Lease:
        orch = self.orch
        orch.role = Role.STANDBY
        standby = Standby(orch)
        following: str | None = None
        follower: asyncio.Task[None] | None = None
        self.last_seen_lease = None
        try:
            while True:
                now = orch.clock()
                floor = max(orch.engine.epoch, orch.seen_epoch)
                lease = await orch.lease.acquire(orch.node, orch.url, now, floor)
                if lease is not None:
                    return lease
                current = self.last_seen_lease = await orch.lease.read()
                leader = None
                if current is not None and current.holder != orch.node:
                    leader = current.url or None
                orch.leader_url = leader
                if leader != following or (follower is not None and follower.done()):
                    if follower is not None:
                        follower.cancel()
                        await asyncio.gather(follower, return_exceptions=True)
                    following = leader
                    follower = None
                    if leader is not None:
                        follower = asyncio.create_task(standby.follow(leader), name="follower")
                await asyncio.sleep(self.ha.retry_interval)
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    # -- active ----------------------------------------------------------------------------

    async def _lead(self, lease: Lease) -> None:
        orch = self.orch
        orch.deposed.clear()
        self.tenure = Tenure(lease, self.ha.renew_interval, self.ha.step_down_margin)
        orch.leader_url = orch.url
        orch.role = Role.ACTIVE
        await orch.commit(orch.engine.take_lead(lease.epoch, orch.node, orch.clock()))
        log.warning(
            "now the active orchestrator with epoch %d: %s (%d task(s), %d worker(s) to call back)",
            lease.epoch,
            takeover_reason(self.last_seen_lease, orch.node, orch.clock()),
            len(orch.engine.table.tasks),
            len(orch.engine.table.worker_urls),
        )
        try:
            async with asyncio.TaskGroup() as group:
                duties = [
                    group.create_task(orch.tick_loop(), name="heartbeat-monitor"),
                    group.create_task(orch.checkpoint_loop(), name="checkpointer"),
                    group.create_task(self._renew_loop(), name="lease-renewer"),
                    group.create_task(self._beat_loop(), name="replication-beats"),
                    group.create_task(self._call_workers(lease.epoch), name="worker-callback"),
                ]
                await orch.deposed.wait()
                for duty in duties:
                    duty.cancel()
        finally:
            if orch.role is Role.ACTIVE:
                orch.role = Role.STANDBY
            self.tenure = None
            orch.hub.fail_all()
            await orch.close_links(protocol.STALE_EPOCH_CLOSE, "this orchestrator was deposed")
            for replica in list(orch.hub.replicas.values()):
                await replica.link.close(protocol.STALE_EPOCH_CLOSE, "deposed")
                orch.hub.forget(replica.node, replica)
        if orch.seen_epoch > lease.epoch:
            # Someone leads with a newer epoch we cannot see yet: until we hear from it,
            # this node must not take the lease back on its own (peer backend).
            orch.lease.observe(
                Lease("", "", orch.seen_epoch, orch.clock(), self.ha.lease_duration, ("",))
            )
        # Said once at WARNING, with the reason, by Orchestrator.step_down.
        log.info("no longer active (%s); following the new leader", orch.deposed_reason)

    async def _renew_loop(self) -> None:
        orch = self.orch
        while True:
            await asyncio.sleep(min(self.ha.renew_interval, 0.1))
            assert self.tenure is not None
            now = orch.clock()
            if self.tenure.must_step_down(now):
                orch.step_down("could not renew the lease before it expires")
                return
            synced = set(orch.hub.synced()) | {orch.node}
            if self.tenure.renew_due(now) or synced != set(self.tenure.lease.synced):
                try:
                    if not await self.renew():
                        return
                except (OSError, aiohttp.ClientError) as exc:
                    log.warning("could not renew the lease (will retry): %s", exc)

    async def renew(self) -> bool:
        """Renew now, recording which standbys are in sync; False if the lease is lost.

        Raises OSError or aiohttp.ClientError when the backend could not be reached.
        """
        orch = self.orch
        async with self._renewing:
            tenure = self.tenure
            if tenure is None:
                return False
            lease = await orch.lease.renew(tenure.lease, orch.clock(), orch.hub.synced())
            if self.tenure is not tenure or orch.role is not Role.ACTIVE:
                return False  # stepped down or stopping meanwhile
            if lease is None:
                orch.step_down("the lease was taken by another orchestrator")
                return False
            tenure.renewed(lease)
            # Tell the standbys at once whether they now count as in sync (peer backend:
            # that is what makes one eligible to take over).
            orch.hub.beat(orch.engine.epoch, orch.lsn, orch.node, orch.url)
            return True

    def _lease_synced(self) -> tuple[str, ...]:
        return self.tenure.lease.synced if self.tenure is not None else ()

    async def _beat_loop(self) -> None:
        """Beat to the standbys; drop one that stopped answering, so that acknowledgements
        waiting for it resume (degraded) after it could have taken over and called the
        workers away from us."""
        orch = self.orch
        limit = self.ha.lease_duration + self.ha.step_down_margin
        while True:
            orch.hub.beat(orch.engine.epoch, orch.lsn, orch.node, orch.url)
            for replica in orch.hub.silent(orch.clock(), limit):
                if orch.lease.shared_record:
                    log.warning("standby %s silent for %.1fs: dropping it", replica.node, limit)
                    await replica.link.close(1001, "silent")
                elif not replica.stalled:
                    # With no shared record a silent standby may be alive behind a cut link and
                    # about to take over: keep acknowledgements waiting rather than lose them.
                    replica.stalled = True
                    log.error(
                        "standby %s silent for %.1fs: holding acknowledgements until it "
                        "answers or a newer leader shows up (peer lease)",
                        replica.node,
                        limit,
                    )
            await asyncio.sleep(min(0.5, self.ha.renew_interval))

    async def _call_workers(self, epoch: int) -> None:
        """Tell every worker known to the state to come over now, with the new epoch."""
        orch = self.orch
        body = {"url": orch.url, "epoch": epoch}
        headers = {protocol.JOIN_TOKEN_HEADER: orch.join_token}
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def call(wid: str, url: str) -> None:
                if wid in orch.links or not url:
                    return
                try:
                    async with http.post(
                        url + protocol.WORKER_SWITCH_PATH, json=body, headers=headers
                    ) as resp:
                        log.info("called worker %s over: HTTP %d", wid, resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("could not call worker %s at %s: %s", wid, url, exc)

            workers = list(orch.engine.table.worker_urls.items())
            await asyncio.gather(*(call(wid, url) for wid, url in workers))

    # -- the replication endpoint (active side) --------------------------------------------

    async def replication_socket(self, request: web.Request) -> web.StreamResponse:
        orch = self.orch
        if request.headers.get(protocol.JOIN_TOKEN_HEADER) != orch.join_token:
            raise AuthError("missing or wrong join token", field=protocol.JOIN_TOKEN_HEADER)
        orch.require_active()
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=10)
            follow = protocol.decode_standby_message(first.data)
            if follow["op"] != "follow":
                raise ProtocolError("the first message must be follow")
        except (ProtocolError, TimeoutError, TypeError) as exc:
            await ws.close(code=4400, message=str(exc)[:100].encode())
            return ws
        if orch.role is not Role.ACTIVE:
            await ws.close(code=protocol.STALE_EPOCH_CLOSE, message=b"not the leader")
            return ws
        node = follow["node"]
        link = Link(f"standby {node}", 0, ws)
        # Snapshot and subscription happen with no await in between: no batch is missed.
        replica = Replica(node, follow["url"], link, orch.lsn, last_heard=orch.clock())
        link.send(
            {
                "op": "snapshot",
                "epoch": orch.engine.epoch,
                "lsn": orch.lsn,
                # Encoded by msgspec already (a task table of any size), embedded as is.
                "state": orjson.Fragment(orch.engine.table.snapshot()),
                "auth": orch.auth_material(),
            }
        )
        orch.hub.subscribe(replica)
        log.info("standby %s (%s) follows from LSN %d", node, follow["url"], orch.lsn)
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                ack = protocol.decode_standby_message(msg.data)
                if ack["op"] == "ack":
                    orch.hub.ack(node, ack["lsn"], orch.clock())
        except ProtocolError as exc:
            log.warning("standby %s sent a bad message: %s", node, exc)
        finally:
            await self._drop_replica(replica)
        return ws

    async def _drop_replica(self, replica: Replica) -> None:
        """Record in the lease that the standby is out of sync before going on without it.

        Until then, acknowledgements that waited for the standby keep waiting: releasing them
        first would let that standby take over without records a client was told are safe.
        """
        orch = self.orch
        orch.hub.leaving(replica.node, replica)
        await replica.link.close()
        if not orch.lease.shared_record and replica.node in self._lease_synced():
            # Nothing outside this process records that it left: it may be alive beyond a
            # cut link and take over once our beats stop for a lease duration. Wait that out
            # (or until we are deposed) before acknowledging anything it has not stored.
            limit = self.ha.lease_duration + self.ha.step_down_margin
            remaining = limit - (orch.clock() - replica.last_heard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(orch.deposed.wait(), max(0.0, remaining))
        while orch.role is Role.ACTIVE and self.tenure is not None:
            try:
                if await self.renew():
                    log.warning(
                        "standby %s disconnected: running without it (degraded) until it returns",
                        replica.node,
                    )
                break
            except (OSError, aiohttp.ClientError) as exc:
                log.warning("cannot record that standby %s left: %s", replica.node, exc)
                await asyncio.sleep(self.ha.retry_interval)
        orch.hub.forget(replica.node, replica)


def takeover_reason(previous: Lease | None, node: str, now: float) -> str:
    """Why this node could take the lease, from the lease it last saw while standing by."""
    if previous is None or not previous.holder:
        return "no other orchestrator held the lease"
    if previous.holder == node:
        return f"this node held the lease already (epoch {previous.epoch})"
    if previous.expired(now):
        silent = now - previous.renewed_at
        return (
            f"the lease of {previous.holder} (epoch {previous.epoch}) expired: not renewed "
            f"for {silent:.1f}s"
        )
    return (
        f"{previous.holder} (epoch {previous.epoch}) stopped holding the lease: it released "
        "it or its process died"
    )


CONTROLLER = web.AppKey("controller", Controller)
