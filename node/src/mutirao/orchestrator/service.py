"""The orchestrator process: the engine behind aiohttp, its journal and its role.

Commands run synchronously on the engine, then :meth:`Orchestrator.execute` journals their
records, streams them to the standbys, sends orders to workers, and once the records are
durable here *and* on every subscribed standby acknowledges results and wakes result
waiters. So no client or worker is told something is recorded before it would survive the
death of any single process, and no reader ever waits for the disk.

Which role the process plays (active or standby) is decided by :mod:`mutirao.ha.controller`
and held in :class:`~mutirao.ha.role.Roles`, whose rule gates every acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from mutirao import protocol, tls
from mutirao.audit import audit
from mutirao.auth import (
    JOIN_TOKEN_FILE,
    PEER_TOKEN_FILE,
    SECRET_FILE,
    SUBMITTER,
    USERS_FILE,
    TokenSigner,
    User,
    UserStore,
    read_or_create_secret,
)
from mutirao.errors import AuthError, MutiraoError, NoSpaceError, ProtocolError, TemporaryError
from mutirao.ha.lease import LeaseBackend
from mutirao.ha.replication import Hub
from mutirao.ha.role import Role, Roles
from mutirao.orchestrator import journal as journal_mod
from mutirao.orchestrator.accounts import Accounts
from mutirao.orchestrator.checkpoint import RecoveryError
from mutirao.orchestrator.engine import Effects, Engine
from mutirao.orchestrator.intake import Intake
from mutirao.orchestrator.links import Link
from mutirao.orchestrator.logins import Logins
from mutirao.orchestrator.metrics import OrchestratorMetrics
from mutirao.orchestrator.tasks import Snapshot, Task, decode_snapshot
from mutirao.orchestrator.throttle import LoginThrottle
from mutirao.protocol import TERMINAL_STATES, RetryPolicy, TaskSpec
from mutirao.settings import Settings, SettingsError

if TYPE_CHECKING:
    from mutirao.tracing import Tracing

log = logging.getLogger(__name__)

LAPSED = "this orchestrator's lease may have lapsed: not acknowledged; retry"


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        lease: LeaseBackend,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.node = settings.node_id
        self.url = settings.advertised_url
        self._timer_set = asyncio.Event()
        """Set when a scheduled task comes before the tick loop's next wake-up."""
        self.lease = lease
        self.clock = clock
        self.monotonic = monotonic
        self.metrics = OrchestratorMetrics(self)
        self.tracing = _tracing(settings)
        """Spans of the tasks that end here (None: tracing is off, the default)."""
        self.engine = self._new_engine()
        self.submissions = protocol.SubmissionParser(settings.tasks, settings.limits)
        self.hub = Hub()
        self.roles = Roles(
            self.node, self.hub, shared_record=lease.shared_record, monotonic=monotonic
        )
        self.intake = Intake(lambda: self.engine, self.execute, clock, self.require_writable)
        data = settings.data_dir
        # The secrets a cluster starts with, journaled by its first leader (see secrets).
        self._first_secret = read_or_create_secret(
            data / SECRET_FILE, given=settings.auth.token_secret
        )
        # With the file lease the orchestrators of one machine share the lease dir, so a
        # generated join token kept there is the same for the active and its standby.
        shared = settings.ha.lease_dir if settings.ha.backend == "file" else data
        self._first_join_token = settings.auth.join_token or read_or_create_secret(
            shared / JOIN_TOKEN_FILE
        )
        self.peer_token = settings.auth.peer_token or _generated_peer_token(settings)
        """What orchestrators present to each other: the replication stream carries every
        secret and password hash, so a worker's join token must not open it."""
        self._signer = TokenSigner(self._first_secret)
        self.logins = Logins(
            LoginThrottle(clock=monotonic),
            lambda reason: self.metrics.logins_refused.labels(reason).inc(),
        )
        self.journal: journal_mod.Journal | None = None
        self.links: dict[str, Link] = {}
        self.waiters: dict[str, list[_Countdown]] = {}
        self.lsn = 0
        """Log sequence number of the last journal batch this node holds."""
        self.leader_lsn = 0
        """As a standby: the leader's LSN at its last beat (for replication lag)."""
        self._sessions = itertools.count(1)
        self.resyncing = False
        """This node lost its state (damaged files): it may not lead before a leader's
        snapshot gave it back (see :mod:`mutirao.ha.standby`)."""

    def require_writable(self) -> None:
        """Raises unless this node may take a write now: it leads, and its disk has room."""
        self.roles.require_active()
        if self.journal is not None and self.journal.no_space:
            raise NoSpaceError("journal: no space left on device; writes resume once space frees")

    @property
    def ready(self) -> bool:
        return self.roles.acknowledgeable()

    def standbys_in_lease(self) -> list[str]:
        """Standbys the lease records as holding every acknowledged record (may take over)."""
        tenure = self.roles.tenure
        if tenure is None:
            return []
        return [n for n in tenure.lease.synced if n != self.node]

    def ha_view(self) -> protocol.HaView:
        active = self.roles.acknowledgeable()  # a lapsed lease steps down before it answers
        return {
            "node": self.node,
            "url": self.url,
            "role": str(self.roles.role),
            "epoch": self.engine.epoch,
            "leader": self.url if active else self.roles.leader_url,
            "lsn": self.lsn,
        }

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        """Recover the state from the data dir and keep the journal open; a checkpoint at
        the end."""
        data = self.settings.data_dir
        try:
            recovered = await asyncio.to_thread(journal_mod.recover, data)
        except RecoveryError as exc:
            if not await self._peer_may_have_it():
                raise
            aside = await asyncio.to_thread(journal_mod.set_aside, data)
            log.error(
                "%s. A peer holds the cluster's state: starting empty to copy it from the "
                "leader, and not leading before that (the damaged files are in %s)",
                str(exc).split(". Restore", 1)[0],
                aside,
            )
            self.resyncing = True
            recovered = await asyncio.to_thread(journal_mod.recover, data)
        snapshot = None if recovered.snapshot is None else decode_snapshot(recovered.snapshot)
        self.engine = self.restore(snapshot, recovered.records)
        counts = self.engine.counts()
        log.info(
            "recovered %d task(s) at epoch %d from %s (%d journal record(s), %d skipped): %s",
            len(self.engine.table.tasks),
            self.engine.epoch,
            self.settings.data_dir,
            len(recovered.records),
            recovered.skipped,
            ", ".join(f"{k}={v}" for k, v in counts.items() if v) or "empty",
        )
        journal = journal_mod.Journal(
            self.settings.data_dir,
            recovered.next_segment,
            fsync=self.settings.journal.fsync,
            on_write=self.metrics.journal_fsync.observe,
        )
        async with journal:
            self.journal = journal
            try:
                yield
            finally:
                await self.checkpoint()

    async def _peer_may_have_it(self) -> bool:
        """Whether another orchestrator may hold the state this node lost: the lease names
        one (as holder or in sync), or peers are configured (the peer lease)."""
        lease = await self.lease.read()
        if lease is not None and any(n != self.node for n in (lease.holder, *lease.synced)):
            return True
        return self.settings.ha.backend == "peer" and bool(self.settings.ha.peers)

    def _new_engine(self) -> Engine:
        settings = self.settings
        tasks = settings.tasks
        retry = RetryPolicy(
            tasks.retry_delay, tasks.retry_backoff, tasks.retry_max_delay, tasks.retry_jitter
        )
        return Engine(
            settings.heartbeat,
            observer=self.metrics,
            retention=tasks.retention,
            retry=retry,
            refuse_unknown_types=tasks.refuse_unknown_types,
        )

    def restore(self, snapshot: Snapshot | None, records: Sequence[dict[str, Any]]) -> Engine:
        """A fresh engine holding a snapshot plus later records (recovery or resync)."""
        engine = self._new_engine()
        if snapshot is not None:
            engine.load(snapshot)
        for record in records:
            try:
                engine.apply(record)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("skipping journal record that does not apply: %s", exc)
        return engine

    async def checkpoint(self, *, fresh: bool = False) -> None:
        """``fresh``: the state came from a leader's snapshot (see Journal.checkpoint)."""
        assert self.journal is not None
        await self.journal.checkpoint(self.engine.table.snapshot_pieces(), fresh=fresh)

    # -- accounts --------------------------------------------------------------------------

    @property
    def accounts(self) -> Accounts:
        return self.engine.table.accounts

    def secrets(self) -> tuple[str, str]:
        """The token secret and join token: the settings' (a Kubernetes Secret, which may
        rotate them), else the journal's, else those this node started with."""
        state, auth = self.accounts.state, self.settings.auth
        return (
            auth.token_secret or state.token_secret or self._first_secret,
            auth.join_token or state.join_token or self._first_join_token,
        )

    @property
    def join_token(self) -> str:
        return self.secrets()[1]

    @property
    def signer(self) -> TokenSigner:
        secret = self.secrets()[0]
        if self._signer.secret != secret:
            self._signer = TokenSigner(secret)
        return self._signer

    def authenticate(self, token: str) -> User:
        auth = self.settings.auth
        if auth.operator_token and hmac.compare_digest(
            token.encode(), auth.operator_token.encode()
        ):
            return User(auth.operator_user, SUBMITTER)
        claims = self.signer.verify(token, self.clock())
        if claims.refresh:
            raise AuthError(
                "a refresh token is not an access token: trade it at POST /v1/refresh",
                field="Authorization",
            )
        return self.accounts.authenticate(claims)

    async def take_lead(self, epoch: int) -> None:
        """Record the new epoch and, on a cluster's first leader, its secrets and the
        bootstrap users file; all in the journal, so every standby gets them."""
        now = self.clock()
        effects = self.engine.take_lead(epoch, self.node, now)
        secrets = self.accounts.secrets(*self.secrets())
        if secrets is not None:
            effects.extend(self.engine.record(secrets))
        store = UserStore(self.settings.data_dir / USERS_FILE)
        imported = store.entries() if store.path.exists() else {}
        if imported and self.accounts.state.users:
            log.info(
                "not importing %s: the cluster's users are in its journal already "
                "(manage them with `mutirao user`)",
                store.path,
            )
            imported = {}
        for name, entry in imported.items():
            try:
                record = self.accounts.add(name, entry["role"], entry["salt"], entry["hash"], now)
            except (MutiraoError, KeyError) as exc:
                log.warning("not importing user %r from %s: %s", name, store.path, exc)
                continue
            effects.extend(self.engine.record(record))
        await self.commit(effects)
        audit("cluster.lead", f"{self.node} leads at epoch {epoch}", target=self.node)
        if secrets is not None:
            audit("cluster.secrets", "the token secret or join token changed", target=self.node)
        if imported:
            done = store.path.with_name(USERS_FILE + ".imported")
            store.path.replace(done)
            audit(
                "user.import",
                f"imported {len(imported)} user(s) into the journal from {done}",
                level=logging.WARNING,
                target=",".join(sorted(imported)),
            )

    # -- effects ---------------------------------------------------------------------------

    def execute(self, effects: Effects) -> asyncio.Future[None]:
        """Journal and replicate the records, send the messages; resolves once durable.

        Orders (assign, cancel, welcome) go out at once, even before their records are on
        disk: if this process dies first, the worker reports the attempt on re-registering
        and it is adopted or dropped, so nothing is lost or recorded twice. An ``ack`` makes
        a worker forget a result and a woken waiter shows a result to a client, so both wait
        until the records are durable here and on every subscribed standby.
        """
        assert self.journal is not None
        if self.engine.earlier:
            self.engine.earlier = False
            self._timer_set.set()
        # Orders are queued before the records: their links then write them out before the
        # journal writer runs, which may block the loop for an fsync (see Journal).
        acks: list[tuple[Link, protocol.AckMsg]] = []
        for wid, messages in effects.sends.items():
            link = self.links.get(wid)
            if link is None:
                continue
            for message in messages:
                if message["op"] == "ack":
                    acks.append((link, message))
                else:
                    link.send(message)
        local = self.journal.append(effects.records)
        if effects.records and not local.done():  # done already: refused, not replicated
            self.lsn += 1
            self.hub.publish(self.lsn, effects.records)
        durable = self._gated(_both(local, self.hub.wait(self.lsn)))
        # Waiters first: a client waits for its answer, a worker's ack is never urgent.
        if effects.finished:
            finished = [task.id for task in effects.finished]
            durable.add_done_callback(lambda _: self._wake(finished))
            if self.tracing is not None:
                self._trace(durable, effects.finished)
        for link, ack in acks:
            link.send_when(durable, ack)
        return durable

    def _trace(self, durable: asyncio.Future[None], tasks: list[Task]) -> None:
        """The spans of tasks that ended, once that is durable (see :mod:`mutirao.tracing`)."""
        tracing = self.tracing
        assert tracing is not None

        def emit(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                tracing.finished(tasks)

        durable.add_done_callback(emit)

    def _gated(self, durable: asyncio.Future[None]) -> asyncio.Future[None]:
        """``durable``, failed instead if this node may no longer acknowledge by the time
        it is (see :mod:`mutirao.ha.role`): every acknowledgement hangs off this future."""
        gated: asyncio.Future[None] = durable.get_loop().create_future()
        gated.add_done_callback(_retrieve)

        def check(done: asyncio.Future[None]) -> None:
            if gated.done():
                return
            if done.cancelled():
                gated.cancel()
            elif (error := done.exception()) is not None:
                gated.set_exception(error)
            elif not self.roles.acknowledgeable():
                gated.set_exception(ConnectionError(LAPSED))
            else:
                gated.set_result(None)

        durable.add_done_callback(check)
        return gated

    async def commit(self, effects: Effects) -> None:
        """Execute and wait until durable; a step-down meanwhile is a retryable error."""
        with _retryable():
            await self.execute(effects)

    async def commit_record(self, record: dict[str, Any]) -> None:
        """Apply a record made for a client's request (a user, a schedule, a limit) and
        wait until it is durable here and on the standbys, as a submission."""
        self.require_writable()
        await self.commit(self.engine.record(record))

    def standby_views(self) -> list[dict[str, Any]]:
        """Each standby: whether the lease counts it in sync, how many batches behind."""
        in_lease = self.standbys_in_lease()
        return [
            {
                "node": r.node,
                "url": r.url,
                "synced": r.node in in_lease,
                "lag": max(0, self.lsn - r.acked),
            }
            for r in self.hub.replicas.values()
        ]

    async def submit(self, specs: list[TaskSpec], owner: str) -> tuple[list[Task], bool]:
        """Durably create tasks (see :mod:`mutirao.orchestrator.intake`); returns them and
        whether any is new (else every spec named a known idempotency key)."""
        with _retryable():
            return await self.intake.submit(specs, owner)

    async def barrier(self) -> None:
        """Wait until every change made so far is durable, before showing state to a client:
        the engine applies records before they reach the disk. While the disk is full
        reads go on at once, showing what is in memory (writes are refused meanwhile), and
        so do they on a node serving reads only (what it recovered is on its disk)."""
        if self.roles.read_only is not None or (self.journal is not None and self.journal.no_space):
            return
        await self.commit(Effects())

    def _wake(self, task_ids: Sequence[str]) -> None:
        waiters = self.waiters
        for task_id in task_ids:
            for countdown in waiters.pop(task_id, ()):
                countdown.left -= 1
                if not countdown.left and not countdown.future.done():
                    countdown.future.set_result(None)

    async def wait_finished(self, tasks: Sequence[Task], timeout: float) -> None:
        """Wait until every one of ``tasks`` has durably finished, or ``timeout`` passed.

        One future and one timer per call, however many tasks: a client waiting for a batch
        of 1,000 costs what one waiting for a single task does."""
        unfinished = [task.id for task in tasks if task.state not in TERMINAL_STATES]
        if not unfinished or timeout <= 0:
            return
        countdown = _Countdown(len(unfinished), asyncio.get_running_loop().create_future())
        waiters = self.waiters
        for task_id in unfinished:
            waiters.setdefault(task_id, []).append(countdown)
        try:
            await asyncio.wait_for(countdown.future, timeout)
        except TimeoutError:
            pass
        finally:
            if countdown.left:
                for task_id in unfinished:
                    held = waiters.get(task_id)
                    if held is not None and countdown in held:
                        held.remove(countdown)
                        if not held:
                            del waiters[task_id]

    # -- the active's duties ---------------------------------------------------------------

    async def tick_loop(self) -> None:
        """Heartbeat bookkeeping and expiry every ``period``, and scheduled tasks as their
        time comes (woken early when a timer earlier than the next tick is set)."""
        period = min(0.25, self.settings.heartbeat.interval / 2)
        next_tick = self.monotonic() + period
        while True:
            due = self.engine.next_due()
            wait = next_tick - self.monotonic()
            if due is not None:
                wait = min(wait, due - self.clock())
            self._timer_set.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_set.wait(), max(0.0, wait))
            if not self.roles.acknowledgeable():
                return  # after a pause: nobody is declared dead by a node no longer leading
            if self.monotonic() < next_tick:
                self.execute(self.engine.fire(self.clock()))
                continue
            next_tick = self.monotonic() + period
            effects = self.engine.tick(self.clock())
            self.execute(effects)
            for wid in effects.disconnect:
                link = self.links.pop(wid, None)
                if link is not None:
                    await link.close()

    async def checkpoint_loop(self) -> None:
        settings = self.settings.journal
        last = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            assert self.journal is not None
            pending = self.journal.records_since_checkpoint
            due = time.monotonic() - last >= settings.checkpoint_interval
            if self.journal.outgrown(settings.checkpoint_min_records) or (pending and due):
                await self.checkpoint()
                last = time.monotonic()

    async def close_links(self, code: int = 1001, reason: str = "") -> None:
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.close(code, reason)

    # -- the worker websocket --------------------------------------------------------------

    async def worker_socket(self, request: web.Request) -> web.StreamResponse:
        require_secret(request, protocol.JOIN_TOKEN_HEADER, self.join_token, "worker join token")
        tls.require_role(request, self.settings.tls, tls.WORKER)
        self.roles.require_active()
        ws = web.WebSocketResponse(max_msg_size=self.settings.limits.max_request_bytes)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=10)
            if first.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                return ws
            hello = protocol.decode_worker_message(first.data)
            if hello["op"] != "hello":
                raise ProtocolError("the first message must be hello")
            protocol.check_worker_protocol(hello)
        except (ProtocolError, TimeoutError) as exc:
            log.warning("rejecting worker connection from %s: %s", request.remote, exc)
            await ws.close(code=4400, message=str(exc)[:100].encode())
            return ws
        if hello["epoch"] > self.engine.epoch:
            self.roles.step_down(
                f"worker {hello['worker_id']} has seen epoch {hello['epoch']}", hello["epoch"]
            )
            await ws.close(code=protocol.STALE_EPOCH_CLOSE, message=b"stale epoch")
            return ws
        if self.roles.role is Role.ACTIVE:
            await self._serve_worker(ws, hello)
        return ws

    async def _serve_worker(self, ws: web.WebSocketResponse, hello: protocol.HelloMsg) -> None:
        wid, session = hello["worker_id"], next(self._sessions)
        old = self.links.get(wid)
        link = self.links[wid] = Link(f"worker {wid}", session, ws)
        if old is not None:
            log.warning("worker %s connected again; closing its previous connection", wid)
            await old.close()
        log.info(
            "worker %s registered from %s with %d slot(s), types %s, %d running",
            wid,
            hello["url"],
            hello["slots"],
            ",".join(hello["types"]),
            len(hello["running"]),
            extra={"worker": wid},
        )
        reason = "connection closed"
        try:
            self.execute(self.engine.hello(hello, session, self.clock()))
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                self._on_worker_message(wid, session, msg.data)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("worker %s sent a bad message: %s", wid, exc)
        finally:
            if ws.close_code == protocol.STALE_EPOCH_CLOSE:
                self.roles.step_down(
                    f"worker {wid} refused our epoch {self.engine.epoch}", self.engine.epoch + 1
                )
            if self.links.get(wid) is link:
                del self.links[wid]
            await link.close()
            if self.roles.role is Role.ACTIVE:
                self.execute(self.engine.worker_lost(wid, session, reason, self.clock()))

    def _on_worker_message(self, wid: str, session: int, data: Any) -> None:
        msg = protocol.decode_worker_message(data)
        if not self.roles.acknowledgeable():
            return
        now = self.clock()
        if msg["op"] == "heartbeat":
            effects = self.engine.heartbeat_from(wid, session, now, msg.get("stuck", 0))
            if effects.records:
                self.execute(effects)
        elif msg["op"] == "started":
            self.execute(self.engine.started(wid, session, msg["attempts"], now))
        elif msg["op"] == "drain":
            self.engine.drain(wid, session)
        elif msg["op"] == "release":
            self.execute(self.engine.release(wid, session, msg["attempts"], now))
        elif msg["op"] == "results":
            if msg["epoch"] > self.engine.epoch:
                self.roles.step_down(f"worker {wid} reports epoch {msg['epoch']}", msg["epoch"])
                return
            self.execute(
                self.engine.results(
                    wid, session, msg["items"], now, msg.get("stuck", 0), asked=msg.get("retry")
                )
            )
        else:
            raise ProtocolError(f"unexpected {msg['op']} message after hello")


@contextlib.contextmanager
def _retryable() -> Iterator[None]:
    """A record that could not be made durable (the journal failed, or this node stepped
    down meanwhile) is a retryable error for the client."""
    try:
        yield
    except ConnectionError as exc:
        raise TemporaryError(f"not recorded: {exc}; retry", delay=0.2) from None


@dataclass(slots=True, eq=False)
class _Countdown:
    """A client waiting for ``left`` more tasks to finish."""

    left: int
    future: asyncio.Future[None]


def _both(local: asyncio.Future[None], replicated: asyncio.Future[None]) -> asyncio.Future[None]:
    """Resolves once ``local`` and then ``replicated`` succeeded; fails with the first of
    them (in that order) that failed. Callbacks, not a task: this runs once per command.
    Without a standby ``replicated`` is already done, and ``local`` itself is the answer."""
    if replicated.done() and not replicated.cancelled() and replicated.exception() is None:
        return local
    replicated.add_done_callback(_retrieve)
    both: asyncio.Future[None] = local.get_loop().create_future()

    def settle(source: asyncio.Future[None]) -> bool:
        """Copy a failure of ``source`` to ``both``; True if it failed."""
        if both.done():
            return True
        if source.cancelled():
            both.cancel()
            return True
        error = source.exception()
        if error is not None:
            both.set_exception(error)
            return True
        return False

    def on_replicated(_: asyncio.Future[None]) -> None:
        if not settle(replicated):
            both.set_result(None)

    def on_local(_: asyncio.Future[None]) -> None:
        if not settle(local):
            replicated.add_done_callback(on_replicated)

    local.add_done_callback(on_local)
    return both


def _retrieve(future: asyncio.Future[None]) -> None:
    """Failures are logged where they happen; nobody else may be awaiting this one."""
    if not future.cancelled():
        future.exception()


ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)


def require_secret(request: web.Request, header: str, secret: str, what: str) -> None:
    """Raises AuthError unless ``header`` holds ``secret`` (compared in constant time)."""
    given = request.headers.get(header, "")
    if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
        raise AuthError(f"missing or wrong {what}", field=header)


def _generated_peer_token(settings: Settings) -> str:
    """With the file lease the orchestrators of one machine share the lease dir, so a
    generated peer token there is theirs alone; other backends span machines."""
    if settings.ha.backend != "file":
        raise SettingsError(
            f"the {settings.ha.backend} lease needs auth.peer_token (--peer-token or "
            "MUTIRAO_AUTH_PEER_TOKEN), the same secret on every orchestrator"
        )
    return read_or_create_secret(settings.ha.lease_dir / PEER_TOKEN_FILE)


def _tracing(settings: Settings) -> Tracing | None:
    """Task spans, if tracing is on (OpenTelemetry is imported only then)."""
    if not settings.tracing.exporter:
        return None
    from mutirao.tracing import from_settings

    return from_settings(settings.tracing, f"mutirao-orchestrator-{settings.node_id}")
