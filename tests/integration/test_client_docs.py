"""docs/client.md runs as it is: each ``python`` block is a script run against a real
cluster (orchestrator and a worker on loopback), found the way users find it
(``MUTIRAO_URL`` and ``MUTIRAO_TOKEN``), and what it prints must be the ``text`` block after
it. A block marked ``file=NAME`` is a module written beside the scripts, and the worker runs
it with ``--tasks``. Then the client's other promises: a cancelled task raises
TaskCancelled, a handle outlives its client, the async client follows a failover."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

import mutirao
from tests.integration.cluster import LocalCluster, Proc, eventually

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
_BLOCK = re.compile(r"```(python|text)( file=(\S+))?\n(.*?)```", re.S)


def _blocks() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The modules (name: source) and the (script, expected output) pairs of the page."""
    modules: dict[str, str] = {}
    scripts: list[tuple[str, str]] = []
    for kind, _, name, body in _BLOCK.findall(DOC.read_text()):
        if name:
            modules[name] = body
        elif kind == "python":
            scripts.append((body, ""))
        elif scripts:
            scripts[-1] = (scripts[-1][0], body)
    return modules, [(code, out) for code, out in scripts if out]


async def test_every_example_of_the_client_docs_prints_what_the_page_says(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    modules, scripts = _blocks()
    assert len(scripts) >= 5
    assert "greetings.py" in modules
    project = tmp_path / "project"
    project.mkdir()
    for name, source in modules.items():
        (project / name).write_text(source)
    cluster.start_orchestrator()
    await cluster.wait_ready()
    argv = [sys.executable, "-m", "mutirao", "worker", "--id", "W1", "--url", cluster.url,
            "--tasks", "greetings"]  # fmt: skip
    worker = Proc("worker-W1", argv, tmp_path / "w1.out", cluster._env(), cwd=project)
    cluster.procs.append(worker.start())
    await cluster.wait_workers("W1")
    env = {**cluster._env(), "MUTIRAO_URL": cluster.url, "MUTIRAO_TOKEN": cluster.token()}
    env["MUTIRAO_CONFIG_DIR"] = str(tmp_path / "config")  # no saved login of this machine
    for i, (code, expected) in enumerate(scripts):
        script = project / f"example_{i}.py"
        script.write_text(code)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=project, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        shown = f"example {i}:\n{code}\nstdout:\n{out.decode()}\nstderr:\n{err.decode()}"
        assert proc.returncode == 0, shown
        assert out.decode() == expected, shown


async def test_a_cancelled_task_raises_and_handles_outlive_their_client(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1")
    async with mutirao.AsyncClient(cluster.url, cluster.token()) as client:
        long = await client.submit("sleep", 30)
        await long.cancel()
        with pytest.raises(mutirao.TaskCancelled) as info:
            await long.result(timeout=10)
        assert info.value.task_id == long.id
        with pytest.raises(mutirao.TaskCancelled):
            await client.gather([await client.submit("echo", 1), long])
        done = await client.submit("echo", "kept")
    # A new client (another process, later) picks a task up by id.
    with mutirao.Client([cluster.url], cluster.token()) as again:
        assert again.task(done.id).result(timeout=10) == "kept"
        assert again.task(long.id).state() == "cancelled"


async def test_the_async_client_follows_a_failover(cluster: LocalCluster) -> None:
    """Given both URLs (as MUTIRAO_URL would), a handle's result arrives from the standby
    after the active is SIGKILLed while the client waits."""
    await cluster.start_ha("W1")
    async with mutirao.AsyncClient(",".join(cluster.urls), cluster.token(), retry_for=30) as client:
        handle = await client.submit("sleep", 1.0)
        waiting = asyncio.create_task(handle.result(timeout=40))

        async def running() -> bool:
            return await handle.state() == "running"

        await eventually(running, timeout=10, what="the task running")
        cluster.proc("orchestrator").kill()
        assert await waiting == {"slept": 1.0}
        assert (await handle.view())["attempts"][-1]["outcome"] == "succeeded"
