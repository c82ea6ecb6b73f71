"""The replication hub: synchronous-replication waiters, sync tracking, what goes out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from mutirao.ha.replication import Hub, Replica
from mutirao.orchestrator.links import Link


class FakeLink:
    """Stands in for a standby's websocket: collects what the hub sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True


def replica(node: str, snapshot_lsn: int = 0) -> tuple[Replica, FakeLink]:
    link = FakeLink()
    return Replica(node, f"http://{node}.test:8000", cast(Link, link), snapshot_lsn), link


async def settle() -> None:
    """Let done-callbacks and waiting tasks run (no time passes)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_wait_resolves_at_once_without_replicas() -> None:
    hub = Hub()
    future = hub.wait(42)
    assert future.done()
    assert future.result() is None
    assert not hub._waiters


async def test_wait_blocks_until_the_replica_acks_that_lsn() -> None:
    hub = Hub()
    b, _ = replica("b", snapshot_lsn=3)
    hub.subscribe(b)
    future = hub.wait(5)
    assert not future.done()
    hub.ack("b", 3, 1.0)
    hub.ack("b", 4, 2.0)
    assert not future.done()
    hub.ack("b", 5, 3.0)
    assert future.done()
    assert hub.wait(5).done()  # already stored
    assert hub.wait(2).done()


async def test_wait_needs_every_replica() -> None:
    hub = Hub()
    hub.subscribe(replica("b")[0])
    hub.subscribe(replica("c")[0])
    future = hub.wait(7)
    hub.ack("b", 9, 1.0)
    assert not future.done()
    hub.ack("c", 7, 1.0)
    assert future.done()


async def test_an_ack_beyond_several_waiters_resolves_them_in_lsn_order() -> None:
    hub = Hub()
    hub.subscribe(replica("b")[0])
    order: list[int] = []
    futures = {lsn: hub.wait(lsn) for lsn in (1, 2, 3, 4)}

    def record(lsn: int) -> Callable[[asyncio.Future[None]], None]:
        return lambda _: order.append(lsn)

    for lsn, future in futures.items():
        future.add_done_callback(record(lsn))
    hub.ack("b", 2, 1.0)
    await settle()
    assert order == [1, 2]
    assert not futures[3].done()
    hub.ack("b", 4, 2.0)
    await settle()
    assert order == [1, 2, 3, 4]
    assert not hub._waiters


async def test_old_or_repeated_acks_change_nothing() -> None:
    hub = Hub()
    b, _ = replica("b")
    hub.subscribe(b)
    hub.ack("b", 5, 1.0)
    hub.ack("b", 3, 2.0)
    assert b.acked == 5
    hub.ack("nobody", 99, 3.0)  # an unknown standby is ignored
    assert hub.lag(5) == {"b": 0}


async def test_a_leaving_replica_keeps_waiters_blocked_until_forgotten() -> None:
    hub = Hub()
    b, link = replica("b")
    hub.subscribe(b)
    hub.ack("b", 0, 1.0)
    future = hub.wait(1)
    hub.leaving("b", b)
    assert b.leaving
    await settle()
    assert not future.done()
    assert hub.synced() == []  # already out of the lease's synced list
    hub.publish(2, [{"e": "x"}])
    hub.beat(1, 2, "a", "http://a.test:8000", 0.5)
    assert link.sent == []  # nothing more goes to it
    hub.forget("b", b)
    assert future.done()
    assert hub.replicas == {}
    assert hub.wait(10).done()


async def test_forgetting_a_replaced_replica_keeps_the_new_one() -> None:
    hub = Hub()
    old, old_link = replica("b", snapshot_lsn=0)
    hub.subscribe(old)
    hub.ack("b", 4, 1.0)
    waiting = hub.wait(5)
    new, new_link = replica("b", snapshot_lsn=6)  # the standby reconnected
    hub.subscribe(new)
    assert old.leaving
    assert hub.replicas == {"b": new}
    hub.leaving("b", old)  # the old socket's cleanup must not touch the new one
    hub.forget("b", old)
    assert hub.replicas == {"b": new}
    assert not new.leaving
    assert not waiting.done()  # the new replica has not stored its snapshot yet
    hub.publish(7, [])
    assert old_link.sent == []
    assert [m["lsn"] for m in new_link.sent] == [7]
    hub.ack("b", 6, 2.0)
    assert waiting.done()
    assert hub.synced() == ["b"]


async def test_synced_lists_replicas_that_stored_their_snapshot() -> None:
    hub = Hub()
    b, _ = replica("b", snapshot_lsn=10)
    c, _ = replica("c", snapshot_lsn=4)
    hub.subscribe(c)
    hub.subscribe(b)
    assert hub.synced() == []
    hub.ack("b", 9, 1.0)
    assert hub.synced() == []
    hub.ack("c", 4, 1.0)
    assert hub.synced() == ["c"]
    hub.ack("b", 10, 2.0)
    assert hub.synced() == ["b", "c"]
    hub.leaving("c", c)
    assert hub.synced() == ["b"]


async def test_fail_all_fails_pending_waiters() -> None:
    hub = Hub()
    hub.subscribe(replica("b")[0])
    hub.ack("b", 0, 1.0)
    done = hub.wait(0)
    pending = [hub.wait(1), hub.wait(2)]
    hub.fail_all()
    for future in pending:
        with pytest.raises(ConnectionError, match="stepped down"):
            await future
    assert done.result() is None
    assert not hub._waiters
    hub.ack("b", 5, 2.0)  # nothing left to resolve, nothing raises


async def test_fail_all_skips_waiters_the_caller_gave_up_on() -> None:
    hub = Hub()
    hub.subscribe(replica("b")[0])
    cancelled = hub.wait(1)
    cancelled.cancel()
    other = hub.wait(2)
    hub.fail_all()
    assert cancelled.cancelled()
    with pytest.raises(ConnectionError):
        await other


async def test_a_cancelled_waiter_does_not_block_later_ones() -> None:
    hub = Hub()
    hub.subscribe(replica("b")[0])
    first = hub.wait(1)
    second = hub.wait(2)
    first.cancel()
    hub.ack("b", 2, 1.0)
    assert second.done()
    assert second.result() is None


async def test_lag_per_replica() -> None:
    hub = Hub()
    assert hub.lag(10) == {}
    hub.subscribe(replica("b")[0])
    hub.subscribe(replica("c")[0])
    assert hub.lag(10) == {"b": 11, "c": 11}  # nothing acknowledged yet (acked = -1)
    hub.ack("b", 7, 1.0)
    hub.ack("c", 12, 1.0)
    assert hub.lag(10) == {"b": 3, "c": 0}


async def test_publish_sends_records_to_subscribed_replicas() -> None:
    hub = Hub()
    b, b_link = replica("b")
    c, c_link = replica("c")
    hub.subscribe(b)
    hub.subscribe(c)
    batch = [{"e": "submit", "id": "t1"}, {"e": "submit", "id": "t2"}]
    hub.publish(3, batch)
    expected = {"op": "records", "lsn": 3, "records": batch}
    assert b_link.sent == [expected]
    assert c_link.sent == [expected]
    hub.leaving("c", c)
    hub.publish(4, [])
    assert [m["lsn"] for m in b_link.sent] == [3, 4]
    assert c_link.sent == [expected]


async def test_beat_tells_each_replica_whether_it_is_in_sync() -> None:
    hub = Hub()
    b, b_link = replica("b", snapshot_lsn=2)
    c, c_link = replica("c", snapshot_lsn=2)
    hub.subscribe(b)
    hub.subscribe(c)
    hub.ack("b", 2, 1.0)
    hub.beat(7, 5, "a", "http://a.test:8000", 0.5)
    beat = {
        "op": "beat",
        "node": "a",
        "url": "http://a.test:8000",
        "epoch": 7,
        "lsn": 5,
        "sent": 0.5,
    }
    assert b_link.sent == [{**beat, "synced": True}]
    assert c_link.sent == [{**beat, "synced": False}]
    hub.leaving("b", b)
    hub.beat(7, 6, "a", "http://a.test:8000", 0.5)
    assert len(b_link.sent) == 1
    assert c_link.sent[-1] == {**beat, "lsn": 6, "synced": False}


async def test_silent_replicas() -> None:
    hub = Hub()
    b, _ = replica("b")
    c, _ = replica("c")
    hub.subscribe(b)
    hub.subscribe(c)
    hub.ack("b", 0, 100.0)
    hub.ack("c", 0, 104.0)
    hub.ack("c", 0, 108.0)  # an ack of nothing new still shows it is alive
    assert hub.silent(109.0, 5.0) == [b]
    assert hub.silent(105.0, 5.0) == []
    hub.leaving("b", b)
    assert hub.silent(200.0, 5.0) == [c]
