"""Leases: the pure decisions, the holder's tenure, and the ``file`` and ``peer`` backends.

Every time is an explicit float: nothing here sleeps or reads the wall clock.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from mutirao.ha.file_lease import FileLease
from mutirao.ha.lease import Lease, Tenure, may_take, next_lease, renewed
from mutirao.ha.peer_lease import PeerLease
from mutirao.protocol import HA_PATH, HaView

URL_A = "http://a.test:8000"
URL_B = "http://b.test:8000"
URL_C = "http://c.test:8000"


def lease(
    holder: str = "a",
    *,
    epoch: int = 3,
    renewed_at: float = 100.0,
    duration: float = 10.0,
    synced: tuple[str, ...] = (),
) -> Lease:
    return Lease(holder, f"http://{holder}.test:8000", epoch, renewed_at, duration, synced)


# -- may_take ----------------------------------------------------------------------------------


def test_may_take_a_free_lease() -> None:
    assert may_take(None, "b", 0.0, None)


def test_may_take_own_lease_even_unexpired_and_alive() -> None:
    assert may_take(lease("a", synced=("a",)), "a", 101.0, True)


def test_may_take_an_expired_lease() -> None:
    current = lease("a", renewed_at=100.0, duration=10.0)
    assert not current.expired(109.999)
    assert current.expired(110.0)
    assert may_take(current, "b", 110.0, None)
    assert may_take(current, "b", 110.0, True)  # alive but unrenewed: hung, replaced


def test_may_take_before_expiry_when_the_holder_is_known_dead() -> None:
    assert may_take(lease("a"), "b", 101.0, False)


def test_may_not_take_from_a_live_unexpired_holder() -> None:
    assert not may_take(lease("a"), "b", 101.0, True)
    assert not may_take(lease("a"), "b", 101.0, None)


def test_a_node_not_in_synced_may_never_take_over() -> None:
    current = lease("a", synced=("a", "c"))
    assert not may_take(current, "b", 1e9, False)  # expired and dead: still refused
    assert not may_take(current, "b", 1e9, None)
    assert may_take(current, "c", 1e9, None)
    assert may_take(current, "c", 101.0, False)
    assert not may_take(current, "c", 101.0, True)


def test_empty_synced_lets_anyone_take_over_after_expiry() -> None:
    current = lease("a", synced=())
    assert not may_take(current, "z", 105.0, None)
    assert may_take(current, "z", 110.0, None)


# -- next_lease and renewed --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current_epoch", "floor", "expected"),
    [(None, 0, 1), (None, 7, 8), (3, 0, 4), (3, 3, 4), (3, 9, 10), (12, 9, 13)],
)
def test_next_lease_epoch_exceeds_current_and_floor(
    current_epoch: int | None, floor: int, expected: int
) -> None:
    current = None if current_epoch is None else lease("a", epoch=current_epoch, synced=("a", "b"))
    taken = next_lease(current, "b", URL_B, 200.0, duration=5.0, epoch_floor=floor)
    assert taken == Lease("b", URL_B, expected, 200.0, 5.0, ("b",))
    assert taken.epoch > floor
    assert current is None or taken.epoch > current.epoch


@given(st.one_of(st.none(), st.integers(0, 10**9)), st.integers(0, 10**9))
def test_next_lease_epoch_strictly_grows(current_epoch: int | None, floor: int) -> None:
    current = None if current_epoch is None else lease("a", epoch=current_epoch)
    taken = next_lease(current, "b", URL_B, 0.0, duration=1.0, epoch_floor=floor)
    assert taken.epoch > floor
    assert current is None or taken.epoch > current.epoch
    assert taken.synced == ("b",)


def test_renewed_keeps_the_holder_first_and_dedups() -> None:
    fresh = renewed(lease("a", synced=("a",)), 150.0, ["b", "a", "b", "c"])
    assert fresh.renewed_at == 150.0
    assert fresh.synced == ("a", "b", "c")
    assert fresh.epoch == 3
    assert renewed(lease("a"), 150.0, []).synced == ("a",)


# -- Tenure ------------------------------------------------------------------------------------


def test_tenure_renew_due_after_the_interval() -> None:
    tenure = Tenure(lease(duration=10.0), asked_at=100.0, renew_interval=2.0, margin=1.0)
    assert not tenure.renew_due(101.999)
    assert tenure.renew_due(102.0)
    tenure.renewed(lease(duration=10.0), asked_at=102.0)
    assert not tenure.renew_due(103.0)
    assert tenure.renew_due(104.0)


def test_tenure_lapses_margin_before_the_lease_could_expire_for_others() -> None:
    """The deadline counts from when the request was sent (``asked_at``), not from what
    the record says: a renewal that took long, or came back after a pause, holds less."""
    tenure = Tenure(lease(duration=10.0), asked_at=100.0, renew_interval=2.0, margin=1.5)
    assert tenure.deadline == 108.5
    assert not tenure.lapsed(108.4)
    assert tenure.lapsed(108.5)
    assert tenure.lapsed(110.0)
    tenure.renewed(lease(renewed_at=500.0, duration=10.0), asked_at=108.0)
    assert not tenure.lapsed(116.0)
    assert tenure.lapsed(116.5)


@given(
    start=st.floats(0.0, 1e9, allow_nan=False),
    duration=st.floats(0.01, 3600.0, allow_nan=False),
    margin_share=st.floats(0.0, 0.99, allow_nan=False),
    interval_share=st.floats(0.01, 1.0, allow_nan=False),
    renew_gaps=st.lists(st.floats(0.0, 7200.0, allow_nan=False), max_size=8),
    write_delay=st.floats(0.0, 60.0, allow_nan=False),
    observer_delay=st.floats(0.0, 60.0, allow_nan=False),
    probe=st.floats(0.0, 20000.0, allow_nan=False),
)
def test_the_holder_stops_acknowledging_before_anyone_may_take_over(
    *,
    start: float,
    duration: float,
    margin_share: float,
    interval_share: float,
    renew_gaps: list[float],
    write_delay: float,
    observer_delay: float,
    probe: float,
) -> None:
    """Whenever a synced rival may take the lease, the holder's tenure has lapsed.

    The holder renews at arbitrary times (none once its tenure lapsed: it no longer holds
    the lease); each renewal is written ``write_delay`` after it was asked for (a slow
    backend, a pause), and a rival sees it no earlier than it was written
    (``observer_delay``), as the ``peer`` backend's beats arrive after they are sent.
    """
    first = Lease("a", URL_A, 1, start, duration, ("a", "b"))
    tenure = Tenure(
        first, start, renew_interval=duration * interval_share, margin=duration * margin_share
    )
    now = start
    for gap in renew_gaps:
        now += gap
        if tenure.lapsed(now):
            break
        tenure.renewed(renewed(tenure.lease, now + write_delay, ["b"]), asked_at=now)
    seen_by_rival = Lease(
        "a", URL_A, 1, tenure.lease.renewed_at + observer_delay, duration, tenure.lease.synced
    )
    for at in (tenure.asked_at + probe, seen_by_rival.expires_at, tenure.lease.expires_at):
        if may_take(seen_by_rival, "b", at, None) or may_take(tenure.lease, "b", at, None):
            assert tenure.lapsed(at)


# -- the file backend --------------------------------------------------------------------------

Opener = Callable[[str], FileLease]


@pytest.fixture
async def open_lease(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[FileLease] = []

    def opener(node: str) -> FileLease:
        backend = FileLease(tmp_path / "leases", node, duration=10.0)
        opened.append(backend)
        return backend

    yield opener
    for backend in opened:
        await backend.close()


async def test_file_first_acquire_wins_epoch_one(open_lease: Opener) -> None:
    a = open_lease("a")
    assert await a.read() is None
    taken = await a.acquire("a", URL_A, 100.0, 0)
    assert taken == Lease("a", URL_A, 1, 100.0, 10.0, ("a",))
    assert await a.read() == taken
    assert await open_lease("b").read() == taken


async def test_file_acquire_refused_while_the_holder_lives(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    assert await a.renew(first, 101.0, ["b"]) is not None
    assert await b.acquire("b", URL_B, 105.0, 0) is None
    assert (await b.read()) == Lease("a", URL_A, 1, 101.0, 10.0, ("a", "b"))


async def test_file_takeover_at_once_when_the_holder_dies(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    assert await a.renew(first, 101.0, ["b"]) is not None
    await a.close()  # the process died: the OS dropped its alive lock
    taken = await b.acquire("b", URL_B, 101.5, 0)  # long before expiry at 111
    assert taken == Lease("b", URL_B, 2, 101.5, 10.0, ("b",))


async def test_file_unsynced_node_cannot_take_over_from_a_dead_holder(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    assert await a.renew(first, 101.0, ["c"]) is not None
    await a.close()
    assert await b.acquire("b", URL_B, 101.5, 0) is None
    assert await b.acquire("b", URL_B, 1e6, 0) is None  # not even long after expiry
    assert (await b.read()) == Lease("a", URL_A, 1, 101.0, 10.0, ("a", "c"))
    # The node that was in sync still may; so may the old holder when it comes back.
    assert (await open_lease("a").acquire("a", URL_A, 1e6, 0)) is not None


async def test_file_a_deposed_holder_cannot_renew(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    mine = await a.renew(first, 101.0, ["b"])
    assert mine is not None
    taken = await b.acquire("b", URL_B, 200.0, 0)  # a is alive but stopped renewing
    assert taken is not None
    assert taken.epoch == 2
    assert await a.renew(mine, 201.0, ["b"]) is None
    assert await a.renew(first, 201.0, []) is None
    assert await b.read() == taken
    assert await b.renew(taken, 202.0, []) == Lease("b", URL_B, 2, 202.0, 10.0, ("b",))


async def test_file_renew_with_a_stale_epoch_of_our_own_fails(open_lease: Opener) -> None:
    a = open_lease("a")
    first = await a.acquire("a", URL_A, 100.0, 0)
    again = await a.acquire("a", URL_A, 101.0, 0)  # restart of the holder: new epoch
    assert first is not None
    assert again is not None
    assert again.epoch == 2
    assert await a.renew(first, 102.0, []) is None
    assert await a.renew(again, 102.0, []) is not None


async def test_file_release_makes_the_lease_available_at_once(open_lease: Opener) -> None:
    a, b, c = open_lease("a"), open_lease("b"), open_lease("c")
    first = await a.acquire("a", URL_A, 100.0, 4)
    assert first is not None
    assert first.epoch == 5
    held = await a.renew(first, 101.0, ["b"])
    assert held is not None
    await a.release(held)
    assert await c.acquire("c", URL_C, 101.5, 0) is None  # still not in sync
    taken = await b.acquire("b", URL_B, 101.5, 0)  # a still lives; no need to wait
    assert taken == Lease("b", URL_B, 6, 101.5, 10.0, ("b",))


async def test_file_release_by_a_non_holder_changes_nothing(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    await b.release(Lease("b", URL_B, 1, 100.0, 10.0, ("b",)))
    assert await a.read() == first


async def test_file_release_of_an_older_epoch_keeps_the_newer_lease(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    assert await a.renew(first, 100.0, ["b"]) is not None
    again = await a.acquire("a", URL_A, 101.0, 0)
    assert again is not None
    await a.release(first)
    assert await a.read() == again
    assert await b.acquire("b", URL_B, 102.0, 0) is None


async def test_file_expiry_replaces_a_live_but_hung_holder(open_lease: Opener) -> None:
    a, b = open_lease("a"), open_lease("b")
    first = await a.acquire("a", URL_A, 100.0, 0)
    assert first is not None
    assert await a.renew(first, 102.0, ["b"]) is not None
    assert await b.acquire("b", URL_B, 111.9, 0) is None  # expires at 112
    taken = await b.acquire("b", URL_B, 112.0, 0)
    assert taken is not None
    assert taken.holder == "b"
    assert taken.epoch == 2
    # a, still alive, now sees b's unexpired lease and may not take it back.
    assert await a.acquire("a", URL_A, 113.0, 0) is None


async def test_file_racing_candidates_exactly_one_wins(tmp_path: Path) -> None:
    for run in range(20):
        directory = tmp_path / f"run{run}"
        a = FileLease(directory, "a", duration=10.0)
        b = FileLease(directory, "b", duration=10.0)
        try:
            results = await asyncio.gather(
                a.acquire("a", URL_A, 100.0, 0), b.acquire("b", URL_B, 100.0, 0)
            )
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            assert winners[0].epoch == 1
            assert await a.read() == winners[0]
        finally:
            await a.close()
            await b.close()


async def test_file_torn_record_is_free_but_epochs_still_grow(
    open_lease: Opener, tmp_path: Path
) -> None:
    a, b = open_lease("a"), open_lease("b")
    assert await a.acquire("a", URL_A, 100.0, 0) is not None
    (tmp_path / "leases" / "lease.json").write_bytes(b'\x00\xff{"holder": "a", "ep')
    assert await b.read() is None
    taken = await b.acquire("b", URL_B, 101.0, 7)
    assert taken == Lease("b", URL_B, 8, 101.0, 10.0, ("b",))
    assert await a.read() == taken


async def test_file_one_live_instance_per_node(open_lease: Opener) -> None:
    a = open_lease("a")
    with pytest.raises(RuntimeError, match="already runs as node 'a'"):
        FileLease(a.directory, "a", duration=10.0)
    await a.close()
    await a.close()  # idempotent
    open_lease("a")  # the old one is gone: the id is free again


def blocked_on_a_lock() -> bool:
    """Whether some process or thread waits for a ``flock`` (Linux ``/proc/locks``)."""
    return "->" in Path("/proc/locks").read_text()


async def test_file_a_liveness_probe_is_not_mistaken_for_a_twin(tmp_path: Path) -> None:
    """Another node checking whether we live holds our alive lock for an instant, always
    under the mutex: a node (re)starting at that moment must wait, not fail."""
    directory = tmp_path / "leases"
    directory.mkdir()
    with (
        (directory / "lease.lock").open("ab") as mutex,
        (directory / "a.alive").open("ab") as probe,
    ):
        fcntl.flock(mutex.fileno(), fcntl.LOCK_EX)
        fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe's moment
        starting = asyncio.ensure_future(asyncio.to_thread(FileLease, directory, "a", 10.0))
        for _ in range(2000):
            if starting.done() or blocked_on_a_lock():
                break
            await asyncio.sleep(0.001)
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
        fcntl.flock(mutex.fileno(), fcntl.LOCK_UN)
    a = await starting
    try:
        assert await a.acquire("a", URL_A, 100.0, 0) is not None
    finally:
        await a.close()


# -- the peer backend --------------------------------------------------------------------------


@pytest.fixture
async def peer_leases() -> AsyncIterator[Callable[..., PeerLease]]:
    made: list[PeerLease] = []

    def make(node: str, peers: list[str], duration: float = 10.0) -> PeerLease:
        backend = PeerLease(node, peers, duration)
        backend._started = 0.0
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


async def test_peer_no_takeover_before_the_observed_lease_expires(
    peer_leases: Callable[..., PeerLease],
) -> None:
    b = peer_leases("b", [])
    b.observe(Lease("a", URL_A, 4, 100.0, 10.0, ("a", "b")))
    assert await b.acquire("b", URL_B, 109.0, 4) is None


async def test_peer_synced_node_takes_over_after_expiry(
    peer_leases: Callable[..., PeerLease],
) -> None:
    b = peer_leases("b", [])
    b.observe(Lease("a", URL_A, 4, 100.0, 10.0, ("a", "b")))
    taken = await b.acquire("b", URL_B, 110.0, 4)
    assert taken == Lease("b", URL_B, 5, 110.0, 10.0, ("b",))
    assert (await b.acquire("b", URL_B, 110.0, 9)) is not None  # epoch_floor counts too


async def test_peer_unsynced_node_does_not_take_over(
    peer_leases: Callable[..., PeerLease],
) -> None:
    b = peer_leases("b", [])
    b.observe(Lease("a", URL_A, 4, 100.0, 10.0, ("a",)))
    assert await b.acquire("b", URL_B, 1e6, 4) is None


class Peer:
    """A stand-in orchestrator answering ``GET /v1/ha`` with a view the test controls."""

    def __init__(self, view: HaView) -> None:
        self.view = view
        self.asked = 0
        app = web.Application()
        app.router.add_get(HA_PATH, self._ha)
        self.server = TestServer(app, host="127.0.0.1")

    async def _ha(self, request: web.Request) -> web.Response:
        self.asked += 1
        return web.json_response(self.view)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


def view(node: str, role: str, epoch: int) -> HaView:
    return {
        "node": node,
        "url": f"http://{node}.test:8000",
        "role": role,
        "epoch": epoch,
        "leader": None,
        "lsn": 0,
    }


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    served = Peer(view("a", "standby", 0))
    await served.server.start_server()
    yield served
    await served.server.close()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_peer_renew_fails_when_a_peer_leads_with_a_newer_epoch(
    peer: Peer, peer_leases: Callable[..., PeerLease]
) -> None:
    b = peer_leases("b", [peer.url])
    mine = Lease("b", URL_B, 5, 100.0, 10.0, ("b",))
    peer.view = view("a", "active", 6)
    assert await b.renew(mine, 101.0, ["a"]) is None
    assert peer.asked == 1
    # b remembers that a leads with epoch 6. Polling tells who leads, not that b holds its
    # records, so b may not take over even once that view runs out...
    peer.view = view("a", "standby", 6)
    assert await b.acquire("b", URL_B, 110.9, 5) is None
    assert await b.acquire("b", URL_B, 111.0, 5) is None
    # ...until a's beats say b is in sync; then, once they stop, a newer epoch still.
    b.observe(Lease("a", URL_A, 6, 111.0, 10.0, ("a", "b")))
    assert await b.acquire("b", URL_B, 120.9, 5) is None
    taken = await b.acquire("b", URL_B, 121.0, 5)
    assert taken == Lease("b", URL_B, 7, 121.0, 10.0, ("b",))


@pytest.mark.parametrize(("role", "epoch"), [("active", 5), ("active", 4), ("standby", 9)])
async def test_peer_renew_succeeds_unless_a_newer_leader_answers(
    peer: Peer, peer_leases: Callable[..., PeerLease], role: str, epoch: int
) -> None:
    b = peer_leases("b", [peer.url])
    peer.view = view("a", role, epoch)
    fresh = await b.renew(Lease("b", URL_B, 5, 100.0, 10.0, ("b",)), 101.0, ["a"])
    assert fresh == Lease("b", URL_B, 5, 101.0, 10.0, ("b", "a"))


async def test_peer_renew_succeeds_when_peers_are_unreachable(
    closed_port_url: str, peer_leases: Callable[..., PeerLease]
) -> None:
    b = peer_leases("b", [closed_port_url])
    fresh = await b.renew(Lease("b", URL_B, 5, 100.0, 10.0, ("b",)), 101.0, [])
    assert fresh == Lease("b", URL_B, 5, 101.0, 10.0, ("b",))


async def test_peer_ignores_its_own_answer(
    peer: Peer, peer_leases: Callable[..., PeerLease]
) -> None:
    b = peer_leases("b", [peer.url])
    peer.view = view("b", "active", 99)  # b listed among its own peers
    assert await b.renew(Lease("b", URL_B, 5, 100.0, 10.0, ("b",)), 101.0, []) is not None


async def test_peer_cold_start_waits_one_duration(
    closed_port_url: str, peer_leases: Callable[..., PeerLease]
) -> None:
    b = peer_leases("b", [closed_port_url], duration=10.0)
    b._started = 1000.0
    assert await b.acquire("b", URL_B, 1000.0, 0) is None
    assert await b.acquire("b", URL_B, 1009.9, 0) is None
    taken = await b.acquire("b", URL_B, 1010.0, 3)  # nobody answers: b may lead
    assert taken == Lease("b", URL_B, 4, 1010.0, 10.0, ("b",))


async def test_peer_cold_start_smallest_reachable_id_wins(
    peer: Peer, peer_leases: Callable[..., PeerLease]
) -> None:
    peer.view = view("a", "standby", 0)
    b = peer_leases("b", [peer.url])
    assert await b.acquire("b", URL_B, 1e6, 0) is None  # a answers and a < b

    peer.view = view("c", "standby", 6)
    taken = await b.acquire("b", URL_B, 1e6, 2)  # c answers but b < c
    assert taken is not None
    assert taken.epoch == 7  # past the rival's epoch too
    assert taken.holder == "b"


async def test_peer_cold_start_follows_an_active_peer(
    peer: Peer, peer_leases: Callable[..., PeerLease]
) -> None:
    peer.view = view("c", "active", 3)
    b = peer_leases("b", [peer.url])
    assert await b.acquire("b", URL_B, 1e6, 0) is None
    current = await b.read()
    assert current is not None
    assert (current.holder, current.url, current.epoch) == ("c", "http://c.test:8000", 3)
