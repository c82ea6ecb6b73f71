"""A full disk under the journal: a real tmpfs of a few MiB (root mounts it), filled up.

While the disk is full, new writes are refused with 507 and the error names the cause;
reads go on; what was accepted before waits instead of failing, and is written, then
answered, by itself once space frees. Nothing acknowledged is lost or doubled across a
restart after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from mutirao.client.http import ApiError
from tests.integration.cluster import LocalCluster, eventually
from tests.integration.scrape import scrape, value

BIG = "x" * 900_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "data"  # the cluster's data dir (the same tmp_path)
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"a tmpfs is needed for this test (run as root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_refuses_writes_serves_reads_and_resumes_by_itself(
    cluster: LocalCluster, small_disk: Path
) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    async with cluster.client(retry_for=0) as client:
        early = await client.submit("echo", "before the disk filled")
        await client.wait(early["id"], timeout=10)
        filler = _fill(small_disk)
        # Big payloads, one per request, until the disk is out: the journal had space
        # reserved ahead, so the first ones still fit. A write that does not (ours, or a
        # worker's report) is kept in memory and retried; its writer waits instead of
        # failing, and the next submission is refused.
        acked = []
        stuck: asyncio.Task[dict[str, object]] | None = None
        for _ in range(40):
            attempt = asyncio.create_task(client.submit("echo", BIG))
            done, _pending = await asyncio.wait([attempt], timeout=2)
            if not done:
                stuck = attempt
                break
            if isinstance(attempt.exception(), ApiError):
                assert "no space left on device" in str(attempt.exception())
                break
            acked.append(attempt.result())
        else:
            raise AssertionError("40 payloads of 900 kB fitted on a full 24 MiB disk")

        async def refused() -> dict[str, object] | None:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    cluster.url + "/v1/tasks",
                    json={"type": "echo", "payload": "while full"},
                    headers={"Authorization": f"Bearer {cluster.token()}"},
                ) as resp,
            ):
                body: dict[str, object] = await resp.json()
                return body if resp.status == 507 else None

        body = await eventually(refused, timeout=20, what="a write refused with 507")
        assert body["error"] == "no_space"
        assert "journal: no space left on device" in str(body["message"])
        assert (await client.get(early["id"]))["result"] == "before the disk filled"
        assert value(await scrape(cluster.url), "mutirao_journal_no_space") == 1
        assert stuck is None or not stuck.done()

        filler.unlink()
        tasks = [*acked, *([await asyncio.wait_for(stuck, 30)] if stuck is not None else [])]

        async def writable() -> bool:
            # The journal tries its held group again every 0.5 s: until then, still 507.
            return value(await scrape(cluster.url), "mutirao_journal_no_space") == 0

        await eventually(writable, timeout=10, what="the journal to take writes again")
        after = await client.submit("echo", "after space freed")
        views = await client.wait_many([t["id"] for t in tasks] + [after["id"]], timeout=30)
        assert all(v["state"] == "succeeded" for v in views)

    cluster.procs[0].kill()
    cluster.start_orchestrator()
    await cluster.wait_ready()
    async with cluster.client() as client:
        ids = [early["id"], after["id"], *(t["id"] for t in tasks)]
        again = await client.wait_many(ids, timeout=30)
        listed = await client.tasks(limit=1000)
    assert [v["state"] for v in again] == ["succeeded"] * len(ids)
    assert len(listed) == len(ids), "nothing lost, nothing doubled by the retried writes"
    log = cluster.procs[0].output()
    assert "journal: no space left on device" in log
    assert "space is available again" in log
    assert "Traceback" not in log


async def test_a_restart_on_a_full_disk_serves_reads_says_why_and_waits_for_space(
    cluster: LocalCluster, small_disk: Path
) -> None:
    """The lease file lives on the full disk too: the orchestrator comes up (health 200,
    not ready), says once in one line why it cannot lead, and, as nobody else may lead,
    serves reads of what it recovered (writes get 507 naming the cause) until space frees;
    then it leads and takes writes again."""
    lease_dir = small_disk / "lease"
    lease_dir.mkdir()
    cluster.env_extra["MUTIRAO_HA_LEASE_DIR"] = str(lease_dir)
    await cluster.start("W1")
    async with cluster.client() as client:
        before = await client.submit("echo", "recorded before", wait=10)
    assert before["state"] == "succeeded"
    cluster.proc("orchestrator").kill()
    filler = _fill(small_disk)
    restarted = cluster.start_orchestrator()

    async def said_why() -> bool:
        return "serving reads only" in restarted.output()

    await eventually(said_why, timeout=20, what="'serving reads only' in its log")
    async with aiohttp.ClientSession() as http:
        async with http.get(cluster.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(cluster.url + "/readyz") as resp:
            ready = await resp.json()
            assert (resp.status, ready["status"]) == (503, "read-only"), ready
            assert "no space left on device" in ready["reason"]
    async with cluster.client(retry_for=1) as client:
        seen = await client.get(before["id"])
        assert (seen["state"], seen["result"]) == ("succeeded", "recorded before")
        assert [t["id"] for t in await client.tasks()] == [before["id"]]
        with pytest.raises(ApiError) as refused:
            await client.submit("echo", "while full")
        assert refused.value.status == 507
        assert "journal: no space left on device" in str(refused.value)
    filler.unlink()
    await cluster.wait_ready()
    async with cluster.client() as client:
        after = await client.submit("echo", "after", wait=10)
        listed = {t["id"] for t in await client.tasks()}
    assert after["state"] == "succeeded"
    assert listed == {before["id"], after["id"]}
    output = restarted.output()
    assert output.count("cannot hold a role") == 1, output[-3000:]
    assert output.count("serving reads only") == 1, output[-3000:]
    assert "No space left on device" in output
    assert "Traceback" not in output
