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
import errno
import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from mutirao import protocol, tls
from mutirao.errors import ProtocolError
from mutirao.ha.lease import Lease, Tenure, may_take
from mutirao.ha.replication import Replica
from mutirao.ha.role import Role
from mutirao.ha.standby import Standby
from mutirao.orchestrator.links import Link
from mutirao.orchestrator.service import Orchestrator, require_secret

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.roles = orch.roles
        self.ha = orch.settings.ha
        self._renewing = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self.last_seen_lease: Lease | None = None
        """The lease as last read while standing by: whom a takeover replaces."""

    async def serve(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: recover, take a role, serve, then stop and checkpoint."""
        async with self.orch.opened():
            self._loop = asyncio.create_task(self.run(), name="roles")
            try:
                yield
            finally:
                await self.stop()

    async def stop(self, app: web.Application | None = None) -> None:
        """Stop acting at once and hand the lease over (SIGTERM). Also an ``on_shutdown``
        hook: aiohttp runs it before it waits for open connections to finish."""
        roles = self.roles
        if roles.role is Role.STOPPING or self._loop is None:
            return
        held = roles.tenure.lease if roles.tenure is not None else None
        roles.role = Role.STOPPING
        self._loop.cancel()
        await asyncio.gather(self._loop, return_exceptions=True)
        await self.shutdown(held)

    async def run(self) -> None:
        orch = self.orch
        if orch.engine.epoch:
            # What the journal says about the last leader, for backends with no shared record:
            # only that leader may lead again without first hearing from the others.
            table = orch.engine.table
            orch.lease.observe(
                Lease(table.leader, "", table.epoch, 0.0, self.ha.lease_duration, (table.leader,))
            )
        said = ""
        while True:
            try:
                lease, asked_at = await self._stand_by()
                await self._lead(lease, asked_at)
            except OSError as exc:
                # A full or broken disk (the lease file): one line, said again only when
                # it changes, not a traceback at every retry.
                if str(exc) != said:
                    said = str(exc)
                    log.error("cannot hold a role: %s; standing by and retrying", exc)
                self.roles.step_down(f"role loop failed: {exc}")
                if exc.errno == errno.ENOSPC:
                    await self._serve_reads(exc)
                await asyncio.sleep(self.ha.retry_interval)
            except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
                # A bug must not leave the process serving with no role.
                log.exception("role loop failed (%s); standing by again", exc)
                self.roles.step_down(f"role loop failed: {exc}")
                await asyncio.sleep(self.ha.retry_interval)

    async def _serve_reads(self, exc: OSError) -> None:
        """The disk is too full to take the lease: if nobody else may be leading (we could
        take it), serve reads from the state recovered here rather than nothing (etcd's
        NOSPACE alarm does the same); writes get 507 until space frees and we lead."""
        orch, roles = self.orch, self.roles
        current = await orch.lease.read()
        if not may_take(current, orch.node, orch.clock(), None):
            roles.read_only = None
            return
        if roles.read_only is None:
            log.warning(
                "serving reads only (%d task(s) at epoch %d) until the disk has room to "
                "take the lease",
                len(orch.engine.table.tasks),
                orch.engine.epoch,
            )
        roles.read_only = (
            f"journal: no space left on device ({exc.filename or orch.settings.data_dir}); "
            "this orchestrator serves reads only until space frees"
        )

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

    async def _stand_by(self) -> tuple[Lease, float]:
        """Follow the leader until this node takes the lease; returns it and the monotonic
        time the successful attempt was made."""
        orch, roles = self.orch, self.roles
        roles.role = Role.STANDBY
        standby = Standby(orch)
        following: str | None = None
        follower: asyncio.Task[None] | None = None
        self.last_seen_lease = None
        try:
            while True:
                now, asked_at = orch.clock(), orch.monotonic()
                floor = max(orch.engine.epoch, roles.seen_epoch)
                if not orch.resyncing:  # with nothing, it must not take over
                    lease = await orch.lease.acquire(orch.node, orch.url, now, floor)
                    if lease is not None:
                        return lease, asked_at
                current = self.last_seen_lease = await orch.lease.read()
                leader = None
                if current is not None and current.holder != orch.node:
                    leader = current.url or None
                    roles.read_only = None  # someone else leads: ask it
                roles.leader_url = leader
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

    async def _lead(self, lease: Lease, asked_at: float) -> None:
        orch, roles = self.orch, self.roles
        roles.lead(
            Tenure(lease, asked_at, self.ha.renew_interval, self.ha.step_down_margin), orch.url
        )
        await orch.take_lead(lease.epoch)
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
                await roles.deposed.wait()
                for duty in duties:
                    duty.cancel()
        finally:
            roles.step_down("leaving the active role")
            orch.hub.fail_all()
            await orch.close_links(protocol.STALE_EPOCH_CLOSE, "this orchestrator was deposed")
            for replica in list(orch.hub.replicas.values()):
                await replica.link.close(protocol.STALE_EPOCH_CLOSE, "deposed")
                orch.hub.forget(replica.node, replica)
        # Someone may lead now whom we cannot see yet: until we hear from it, this node must
        # not take the lease back on its own (peer backend; the others read a shared record).
        epoch = max(roles.seen_epoch, lease.epoch)
        orch.lease.observe(Lease("", "", epoch, orch.clock(), self.ha.lease_duration, ("",)))
        # Said once at WARNING, with the reason, by Roles.step_down.
        log.info("no longer active (%s); following the new leader", roles.deposed_reason)

    async def _renew_loop(self) -> None:
        orch, roles = self.orch, self.roles
        while True:
            await asyncio.sleep(min(self.ha.renew_interval, 0.1))
            tenure = roles.tenure
            if not roles.acknowledgeable() or tenure is None:
                return  # stepped down, saying why
            synced = set(orch.hub.synced()) | {orch.node}
            if tenure.renew_due(orch.monotonic()) or synced != set(tenure.lease.synced):
                try:
                    if not await self.renew():
                        return
                except (OSError, aiohttp.ClientError) as exc:
                    log.warning("could not renew the lease (will retry): %s", exc)

    async def renew(self) -> bool:
        """Renew now, recording which standbys are in sync; False if the lease is lost.

        Raises OSError or aiohttp.ClientError when the backend could not be reached.
        """
        orch, roles = self.orch, self.roles
        async with self._renewing:
            tenure = roles.tenure
            if tenure is None:
                return False
            asked_at = orch.monotonic()
            lease = await orch.lease.renew(tenure.lease, orch.clock(), orch.hub.synced())
            if roles.tenure is not tenure or roles.role is not Role.ACTIVE:
                return False  # stepped down or stopping meanwhile
            if lease is None:
                roles.step_down("the lease was taken by another orchestrator")
                return False
            tenure.renewed(lease, asked_at)
            # Tell the standbys at once whether they now count as in sync (peer backend:
            # that is what makes one eligible to take over).
            self._beat()
            return True

    def _beat(self) -> None:
        orch = self.orch
        orch.hub.beat(orch.engine.epoch, orch.lsn, orch.node, orch.url, orch.monotonic())

    async def _beat_loop(self) -> None:
        """Beat to the standbys. With a shared lease record, drop one that stopped
        answering (the record then says it is out of sync, so it cannot take over), and
        acknowledgements waiting for it resume. With the peer lease a silent standby may be
        alive behind a cut link and about to take over: the acknowledgement rule (see
        :mod:`.role`) steps this node down before it could."""
        orch = self.orch
        limit = self.ha.lease_duration + self.ha.step_down_margin
        while True:
            self._beat()
            if orch.lease.shared_record:
                for replica in orch.hub.silent(orch.clock(), limit):
                    log.warning("standby %s silent for %.1fs: dropping it", replica.node, limit)
                    await replica.link.close(1001, "silent")
            await asyncio.sleep(min(0.5, self.ha.renew_interval))

    async def _call_workers(self, epoch: int) -> None:
        """Tell every worker known to the state to come over now, with the new epoch."""
        orch = self.orch
        body = {"url": orch.url, "epoch": epoch}
        headers = {protocol.JOIN_TOKEN_HEADER: orch.join_token}
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with tls.http_session(orch.settings.tls, timeout=timeout) as http:

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
        require_secret(request, protocol.PEER_TOKEN_HEADER, orch.peer_token, "peer token")
        tls.require_role(request, orch.settings.tls, tls.ORCHESTRATOR)
        self.roles.require_active()
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
        if self.roles.role is not Role.ACTIVE:
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
                    orch.hub.ack(node, ack["lsn"], orch.clock(), ack["beat"], ack["eligible"])
        except ProtocolError as exc:
            log.warning("standby %s sent a bad message: %s", node, exc)
        finally:
            await self._drop_replica(replica)
        return ws

    async def _drop_replica(self, replica: Replica) -> None:
        """Record that the standby is out of sync before going on without it.

        Until then, acknowledgements that waited for the standby keep waiting: releasing them
        first would let that standby take over without records a client was told are safe.
        With a shared lease record, a renewal records it. With the peer lease nothing outside
        this process can, so this node waits until the standby's process is gone (its port
        refuses us), it follows again (its new stream starts out of sync), or this node is
        deposed: meanwhile a standby that may take over and hears nothing from us makes this
        node step down (see :mod:`.role`).
        """
        orch, roles = self.orch, self.roles
        orch.hub.leaving(replica.node, replica)
        await replica.link.close()
        if not orch.lease.shared_record:
            await self._until_gone(replica)
        while roles.role is Role.ACTIVE and roles.tenure is not None:
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

    async def _until_gone(self, replica: Replica) -> None:
        """Peer lease: wait until ``replica`` can no longer take over (see _drop_replica)."""
        orch, roles = self.orch, self.roles
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.ha.retry_interval))
        async with tls.http_session(orch.settings.tls, timeout=timeout) as http:
            while roles.role is Role.ACTIVE and orch.hub.replicas.get(replica.node) is replica:
                try:
                    async with http.get(replica.url.rstrip("/") + protocol.HA_PATH) as resp:
                        view = await resp.json()
                    if view.get("role") == "active" and view.get("epoch", 0) > orch.engine.epoch:
                        roles.step_down(
                            f"standby {replica.node} leads with epoch {view['epoch']}",
                            view["epoch"],
                        )
                except aiohttp.ClientConnectorError as exc:
                    if exc.os_error.errno == errno.ECONNREFUSED:
                        log.warning("standby %s is gone (%s refused us)", replica.node, replica.url)
                        orch.hub.witness.down(replica.node)
                        return
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass  # cut off or hung: it may yet take over, so keep waiting
                await asyncio.sleep(self.ha.retry_interval)


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
