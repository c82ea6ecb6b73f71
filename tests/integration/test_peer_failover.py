"""Failover with the ``peer`` lease (no shared disk), and split brain across a cut link.

The split-brain test puts the two orchestrators in their own network namespaces (real
``ip netns`` hosts joined by a bridge; CI runs as root) and cuts the link between them while
both still reach the workers and the client.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from mutirao.client.http import Client
from tests.integration.cluster import LocalCluster, Proc, eventually, ha_view, is_active
from tests.integration.netns import Netns
from tests.integration.test_pause import ROUNDS, Load, done_once

LEASE = 2.0
PEER_ENV = {
    "MUTIRAO_HA_BACKEND": "peer",
    "MUTIRAO_HA_LEASE_DURATION": str(LEASE),
    "MUTIRAO_HA_RENEW_INTERVAL": "0.4",
    "MUTIRAO_HA_STEP_DOWN_MARGIN": "0.5",
}


async def test_peer_lease_failover_within_lease_duration_plus_one_second(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.env_extra.update(PEER_ENV)
    cluster.env_extra["MUTIRAO_HA_PEERS"] = f"{cluster.url},{cluster.backup_url}"
    cluster.start_orchestrator()
    await cluster.wait_ready()  # a cold start waits one lease duration for another leader
    cluster.start_backup()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    async with cluster.client(retry_for=30) as client:

        async def standby_synced() -> bool:
            return any(s["synced"] for s in (await client.cluster())["standbys"])

        await eventually(standby_synced, timeout=20, what="standby in sync")
        before = await client.submit_batch([{"type": "sleep", "payload": 0.2}] * 6)
        next(p for p in cluster.procs if p.name == "orchestrator").kill()
        killed = time.monotonic()
        after = await client.submit("echo", "after")
        failover = time.monotonic() - killed
        views = await client.wait_many([t["id"] for t in before] + [after["id"]], timeout=30)
        info = await client.cluster()
    with capsys.disabled():
        print(
            f"\n[failover] peer lease ({LEASE:.0f}s): SIGKILL of the active -> next submission "
            f"acknowledged by the standby in {failover * 1000:.0f} ms"
        )
    assert info["node"] == "backup"
    assert failover <= LEASE + 1
    assert all(done_once(v) for v in views)


@pytest.fixture
def netns() -> Iterator[Netns]:
    hosts = Netns()
    try:
        hosts.setup()
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.fail(f"network namespaces are needed for this test (run as root): {exc}")
    yield hosts
    hosts.teardown()


async def test_split_brain_records_each_result_once_and_fences_stale_epochs(
    cluster: LocalCluster, netns: Netns
) -> None:
    """Cut the link between the two orchestrators (peer lease) while a stream of tasks runs.
    The standby takes over with a newer epoch and calls the workers over; the old active
    is refused by the workers, steps down, and after the link heals follows the new leader.
    Every acknowledged task ends with exactly one recorded result."""
    a_url = f"http://{netns.address('a')}:7000"
    b_url = f"http://{netns.address('b')}:7001"
    cluster.env_extra.update(PEER_ENV)
    env_peers = {"MUTIRAO_HA_PEERS": f"{a_url},{b_url}"}
    cluster.env_extra.update(env_peers)

    def orchestrator(host: str, command: str, port: int) -> Proc:
        proc = Proc(
            f"{command}-{host}",
            [*netns.exec_prefix(host), sys.executable, "-m", "mutirao", command,
             "--host", netns.address(host), "--port", str(port),
             "--data-dir", str(cluster.root / f"data-{host}"),
             "--node-id", f"node-{host}"],
            cluster.root / f"{command}-{host}.out",
            cluster.orchestrator_env(),
        )  # fmt: skip
        cluster.procs.append(proc.start())
        return proc

    orchestrator("a", "orchestrator", 7000)
    await eventually(lambda: is_active(a_url), timeout=20, what="node-a active")
    orchestrator("b", "backup", 7001)
    workers = []
    for wid in ("W1", "W2"):
        argv = [sys.executable, "-m", "mutirao", "worker", "--id", wid, "--url",
                f"{a_url},{b_url}", "--host", netns.address("root"), "--slots", "4"]  # fmt: skip
        proc = Proc(f"worker-{wid}", argv, cluster.root / f"worker-{wid}.out", cluster._env())
        workers.append(proc)
        cluster.procs.append(proc.start())
    token = _token(cluster.root / "data-a")

    async with Client([a_url, b_url], token, retry_for=30) as client:

        async def ready() -> bool:
            info = await client.cluster()
            alive = [w for w in info["workers"] if w["state"] == "alive"]
            return len(alive) == 2 and any(s["synced"] for s in info["standbys"])

        await eventually(ready, timeout=20, what="workers alive and standby in sync")
        ids: list[str] = []

        async def stream() -> None:
            for i in range(120):
                task = await client.submit("sleep", 0.05, key=f"split-{i}")
                ids.append(task["id"])

        submitter = asyncio.create_task(stream())
        await eventually(lambda: _truthy(len(ids) >= 30), timeout=20, what="30 submissions")
        netns.cut()
        cut_at = time.monotonic()
        await eventually(lambda: is_active(b_url), timeout=LEASE + 5, what="node-b active")
        took_over = time.monotonic() - cut_at

        async def a_deposed() -> bool:
            view = await ha_view(a_url)
            return view is not None and view["role"] != "active"

        await eventually(a_deposed, timeout=10, what="node-a to step down")
        await submitter
        netns.heal()

        async def a_follows_b() -> bool:
            view = await ha_view(a_url)
            return view is not None and view["leader"] == b_url and view["epoch"] >= 2

        await eventually(a_follows_b, timeout=20, what="node-a to follow node-b after healing")
        views = await client.wait_many(ids, timeout=60)
        info = await client.cluster()
        statuses = [await _worker_status(w["url"]) for w in info["workers"]]
    assert info["node"] == "node-b"
    assert len(set(ids)) == 120
    assert all(done_once(v) for v in views), [v for v in views if not done_once(v)]
    # Every worker follows the newest epoch and no longer obeys the deposed leader's.
    assert {s["epoch"] for s in statuses} == {info["epoch"]}
    assert took_over <= LEASE + 2


async def _truthy(value: bool) -> bool:
    return value


async def _worker_status(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/status") as resp:
        status: dict[str, object] = await resp.json()
        return status


def _token(data_dir: Path) -> str:
    from mutirao.auth import ADMIN, SECRET_FILE, TokenSigner, User

    secret = (data_dir / SECRET_FILE).read_text().strip()
    return TokenSigner(secret).mint(User("admin", ADMIN), time.time(), 3600)


async def test_a_standby_that_never_synced_does_not_take_over_with_the_peer_lease(
    cluster: LocalCluster,
) -> None:
    """A standby that never received the leader's state (here: a wrong peer token) must not
    take over when the leader dies: it would serve an empty state as if nothing had been
    acknowledged. It waits for the leader to come back instead."""
    cluster.env_extra.update(PEER_ENV)
    cluster.env_extra["MUTIRAO_HA_PEERS"] = f"{cluster.url},{cluster.backup_url}"
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        task = await client.submit("echo", "kept")
        await client.wait(task["id"], timeout=10)
    cluster.env_extra["MUTIRAO_AUTH_PEER_TOKEN"] = "not-the-cluster-token"
    backup = cluster.start_backup()
    await eventually(lambda: _standby_at(cluster.backup_url), timeout=10, what="backup up")
    next(p for p in cluster.procs if p.name == "orchestrator").kill()
    await asyncio.sleep(0)
    deadline = time.monotonic() + LEASE + 1.5
    while time.monotonic() < deadline:  # bounded: the claim is that nothing happens
        view = await ha_view(cluster.backup_url)
        assert view is not None
        assert view["role"] != "active", "an out-of-sync standby took over"
        await asyncio.sleep(0.1)
    assert backup.popen is not None
    assert backup.popen.poll() is None
    # The old leader comes back with everything it acknowledged.
    del cluster.env_extra["MUTIRAO_AUTH_PEER_TOKEN"]
    cluster.start_orchestrator()
    await cluster.wait_ready()
    async with cluster.client() as client:
        assert (await client.wait(task["id"], timeout=10))["result"] == "kept"


async def _standby_at(url: str) -> bool:
    view = await ha_view(url)
    return view is not None and view["role"] == "standby"


async def test_partition_rounds_under_load_lose_no_acknowledged_task(
    cluster: LocalCluster, netns: Netns, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cut and heal the link between the two orchestrators (peer lease), round after round,
    under load from HTTP clients pinned to each and from the ``Client``. The side cut off
    from a standby that may take over stops acknowledging before that standby could;
    every acknowledged task is on the final leader and ran exactly once.
    ``MUTIRAO_CHAOS_ROUNDS`` sets the number of rounds."""
    urls = {h: f"http://{netns.address(h)}:{7000 + i}" for i, h in enumerate("ab")}
    cluster.env_extra.update(PEER_ENV)
    cluster.env_extra["MUTIRAO_HA_PEERS"] = ",".join(urls.values())

    def orchestrator(host: str, command: str) -> None:
        port = urls[host].rsplit(":", 1)[1]
        data = str(cluster.root / f"data-{host}")
        argv = [*netns.exec_prefix(host), sys.executable, "-m", "mutirao", command,
                "--host", netns.address(host), "--port", port,
                "--data-dir", data, "--node-id", f"node-{host}"]  # fmt: skip
        out = cluster.root / f"{command}-{host}.out"
        proc = Proc(f"{command}-{host}", argv, out, cluster.orchestrator_env())
        cluster.procs.append(proc.start())

    orchestrator("a", "orchestrator")
    await eventually(lambda: is_active(urls["a"]), timeout=20, what="node-a active")
    orchestrator("b", "backup")
    for wid in ("W1", "W2"):
        argv = [sys.executable, "-m", "mutirao", "worker", "--id", wid, "--url",
                ",".join(urls.values()), "--host", netns.address("root"),
                "--slots", "4"]  # fmt: skip
        proc = Proc(f"worker-{wid}", argv, cluster.root / f"worker-{wid}.out", cluster._env())
        cluster.procs.append(proc.start())
    load = Load(list(urls.values()), _token(cluster.root / "data-a"))
    http_timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=http_timeout) as http,
        Client(load.urls, load.token, retry_for=30) as admin,
    ):

        async def synced() -> bool:
            info = await admin.cluster()
            alive = [w for w in info["workers"] if w["state"] == "alive"]
            return len(alive) == 2 and any(s["synced"] for s in info["standbys"])

        submitters = [
            asyncio.create_task(load.pinned(http, url, f"http-{host}"))
            for host, url in urls.items()
        ]
        submitters.append(asyncio.create_task(load.client("client")))
        try:
            for round_ in range(ROUNDS):
                await eventually(synced, timeout=30, what=f"round {round_}: standby in sync")
                a, b = urls.values()
                active, other = (a, b) if await is_active(a) else (b, a)
                await load.grows(20, timeout=20, what="load flowing")
                netns.cut()
                try:
                    await eventually(
                        partial(is_active, other), timeout=LEASE + 5, what="the other to lead"
                    )
                    await eventually(
                        partial(_not_active, active),
                        timeout=10,
                        what="the cut-off side to step down",
                    )
                finally:
                    netns.heal()
                await load.grows(20, timeout=30, what="load acknowledged after healing")
        finally:
            await load.halt(submitters)
        lost, wrong = await load.check(admin)
    with capsys.disabled():
        print(f"\n[partition] {ROUNDS} cut/heal round(s) between the orchestrators (peer "
              f"lease {LEASE:g}s) under load: {load.summary(lost)}")  # fmt: skip
    assert (lost, wrong) == ([], []), "acknowledged then lost, or not recorded once"


async def _not_active(url: str) -> bool:
    view = await ha_view(url)
    return view is not None and view["role"] != "active"
