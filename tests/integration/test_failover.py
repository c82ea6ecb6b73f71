"""Automatic failover with real processes: an active orchestrator, a hot standby (``file``
lease on a shared directory), workers and a client, with SIGKILLs in the middle of work."""

from __future__ import annotations

import asyncio
import signal
import stat
import time
from typing import Any

import pytest

from mutirao.auth import JOIN_TOKEN_FILE, PEER_TOKEN_FILE, SECRET_FILE, USERS_FILE
from mutirao.client.http import Client, Unreachable
from mutirao.client.session import Session
from mutirao.orchestrator.checkpoint import CHECKPOINT_NAME
from mutirao.protocol import TaskView
from tests.integration.cluster import LocalCluster, eventually, standby_synced

PRIVATE_FILES = {
    SECRET_FILE,
    USERS_FILE,
    f"{USERS_FILE}.imported",
    JOIN_TOKEN_FILE,
    CHECKPOINT_NAME,
}


def _done_once(view: TaskView) -> bool:
    outcomes = [a["outcome"] for a in view["attempts"]]
    return view["state"] == "succeeded" and outcomes.count("succeeded") == 1


async def _leader(client: Client) -> dict[str, Any]:
    return await client.cluster()


async def test_failover_under_a_stream_of_submissions_loses_nothing(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    await cluster.start_ha("W1", "W2")
    primary = cluster.proc("orchestrator")
    acked: dict[int, str] = {}
    async with cluster.client(retry_for=30) as client:
        others = await client.submit_batch([{"type": "sleep", "payload": 0.3}] * 16)

        async def stream() -> float:
            """Submit 500 tasks one by one; returns when the first one after the kill was
            acknowledged. A submission cut off by the kill is retried by the client with
            the same idempotency key, so it can never be created twice."""
            first_after = 0.0
            for i in range(500):
                task = await client.submit("echo", {"i": i}, key=f"stream-{i}")
                acked[i] = task["id"]
                if killed.is_set() and not first_after:
                    first_after = time.monotonic()
            return first_after

        killed = asyncio.Event()
        submitter = asyncio.create_task(stream())
        await eventually(
            lambda: _async(len(acked) >= 150), timeout=30, what="150 acknowledged submissions"
        )
        primary.kill()
        killed_at = time.monotonic()
        killed.set()
        first_after = await submitter
        failover = first_after - killed_at
        info = await _leader(client)
        views = await client.wait_many(list(acked.values()), timeout=60)
        background = await client.wait_many([t["id"] for t in others], timeout=60)
        listed = await client.tasks(limit=10_000)
    assert info["node"] == "backup"
    assert info["epoch"] == 2
    assert len(set(acked.values())) == 500, "a resubmission with the same key made a new task"
    for i, view in enumerate(views):
        assert _done_once(view), view
        assert view["result"] == {"i": i}
    assert all(_done_once(v) for v in background)
    stream_keys = [t["key"] for t in listed if (t["key"] or "").startswith("stream-")]
    assert sorted(stream_keys) == sorted(f"stream-{i}" for i in range(500))
    with capsys.disabled():
        print(
            f"\n[failover] file lease: SIGKILL of the active -> next submission "
            f"acknowledged by the standby in {failover * 1000:.0f} ms"
        )
    assert failover < 5


async def _async(value: bool) -> bool:
    return value


async def test_old_active_rejoins_as_standby_and_a_second_failover_returns_to_it(
    cluster: LocalCluster,
) -> None:
    await cluster.start_ha("W1")
    async with cluster.client(retry_for=30) as client:
        first = await client.submit_batch([{"type": "sleep", "payload": 0.2}] * 8)
        cluster.proc("orchestrator").kill()
        second = await client.submit_batch([{"type": "echo", "payload": n} for n in range(8)])
        assert (await _leader(client))["node"] == "backup"

        cluster.start_orchestrator()  # the old active, on its old data dir
        await standby_synced(client, "orchestrator")
        third = await client.submit_batch([{"type": "echo", "payload": n} for n in range(8)])
        cluster.proc("backup").kill()
        fourth = await client.submit_batch([{"type": "sleep", "payload": 0.1}] * 8)
        info = await _leader(client)
        ids = [t["id"] for batch in (first, second, third, fourth) for t in batch]
        views = await client.wait_many(ids, timeout=60)
    assert info["node"] == "orchestrator"
    assert info["epoch"] == 3
    assert all(_done_once(v) for v in views), [v for v in views if not _done_once(v)]


async def test_active_runs_degraded_without_standby_and_the_standby_catches_up(
    cluster: LocalCluster,
) -> None:
    await cluster.start_ha("W1")
    async with cluster.client(retry_for=30) as client:
        cluster.proc("backup").kill()

        async def degraded() -> bool:
            return not (await client.cluster())["standbys"]

        await eventually(degraded, timeout=10, what="the active to notice the standby left")
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(cluster.url + "/readyz") as resp:
            ready = await resp.json()
        assert resp.status == 200
        assert ready["degraded"] is True
        during = await client.submit_batch([{"type": "echo", "payload": n} for n in range(20)])
        cluster.start_backup()
        await standby_synced(client, "backup")
        cluster.proc("orchestrator").kill()
        views = await client.wait_many([t["id"] for t in during], timeout=30)
        info = await _leader(client)
    assert info["node"] == "backup", "the caught-up standby must take over"
    assert [v["result"] for v in views] == list(range(20))
    assert all(_done_once(v) for v in views)


async def test_sigterm_of_the_active_hands_the_lease_over_at_once(
    cluster: LocalCluster,
) -> None:
    """A clean stop releases the lease: the standby takes over at its next poll instead of
    waiting for the lease to expire, and nothing acknowledged is lost."""
    await cluster.start_ha("W1")
    primary = cluster.proc("orchestrator")
    async with cluster.client(retry_for=30) as client:
        before = await client.submit_batch([{"type": "sleep", "payload": 0.2}] * 6)
        primary.signal(signal.SIGTERM)
        stopped = time.monotonic()
        after = await client.submit("echo", "after a clean stop")
        handover = time.monotonic() - stopped
        views = await client.wait_many([t["id"] for t in before] + [after["id"]], timeout=30)
        info = await _leader(client)
    assert primary.popen is not None
    assert primary.popen.wait(15) == 0
    assert info["node"] == "backup"
    assert handover < 3, f"handover took {handover:.1f}s"
    assert all(_done_once(v) for v in views)


async def test_a_session_fails_over_by_reconnecting_and_resubmitting(cluster: LocalCluster) -> None:
    """A session talks to one orchestrator: when the active dies, its calls in flight fail
    with Unreachable (never a silent loss), a standby refuses a new session until it leads,
    and resubmitting with the same keys on a new session makes no second task."""
    await cluster.start_ha("W1")
    async with cluster.client(retry_for=30) as client:
        async with client.session() as session:
            before = [await session.submit("echo", n, key=f"s-{n}") for n in range(20)]
            cluster.proc("orchestrator").kill()
            with pytest.raises(Unreachable):
                await _submit_until_it_fails(session, 20)
        async with client.session() as again:  # on the backup once it took over
            after = [await again.submit("echo", n, key=f"s-{n}") for n in range(40)]
        assert [t["id"] for t in after[:20]] == [t["id"] for t in before]
        views = await client.wait_many([t["id"] for t in after], timeout=30)
    assert all(_done_once(v) for v in views), views
    assert [v["result"] for v in views] == list(range(40))


async def _submit_until_it_fails(session: Session, start: int) -> None:
    for n in range(start, start + 1000):
        await session.submit("echo", n, key=f"s-{n}")


async def test_every_file_with_secrets_or_task_data_is_private_on_both_orchestrators(
    cluster: LocalCluster,
) -> None:
    """Journal segments and checkpoints (which hold users and secrets too), the imported
    bootstrap users file and the first secrets: 0600 on the active and on the standby, in
    data dirs that are 0700; and the peer token the two generate in their shared lease dir
    (the standby syncs with it)."""
    cluster.env_extra["MUTIRAO_AUTH_PEER_TOKEN"] = ""  # generated, not given
    cluster.bootstrap_user("alice", "pw-alice-123")
    await cluster.start_ha("W1")
    async with cluster.client() as client:
        task = await client.submit("echo", {"secret": "payload"})
        await client.wait(task["id"], timeout=10)
        await standby_synced(client, "backup")
    checked = []
    for data in (cluster.data_dir, cluster.root / "backup-data"):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700, data
        for path in data.iterdir():
            if path.name.startswith("journal-") or path.name in PRIVATE_FILES:
                checked.append(f"{data.name}/{path.name}")
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for expected in (f"data/{SECRET_FILE}", f"data/{USERS_FILE}.imported",
                     f"backup-data/{SECRET_FILE}", f"backup-data/{CHECKPOINT_NAME}"):  # fmt: skip
        assert expected in checked, checked
    peer_token = cluster.root / "lease" / PEER_TOKEN_FILE
    assert stat.S_IMODE(peer_token.stat().st_mode) == 0o600
    assert any(c.startswith("data/journal-") for c in checked), checked
    assert any(c.startswith("backup-data/journal-") for c in checked), checked
