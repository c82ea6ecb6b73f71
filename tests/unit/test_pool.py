"""The process pool for blocking handlers: real child processes, killed on cancel."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from mutirao.worker.pool import HandlerFailed, ProcessDied, ProcessPool
from tests.integration.cluster import eventually

MODULES = ["tests.integration.fixtures.user_tasks"]


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    """One slot process, importing the test task module; killed at the end."""
    one = ProcessPool(1, MODULES)
    yield one
    one.close()


async def _running(pool: ProcessPool) -> None:
    """Wait until a call was handed to a slot process (bounded poll)."""

    async def handed() -> bool:
        return any(slot.reading for slot in pool._slots)

    await eventually(handed, timeout=10, what="a call handed to a slot process")


async def test_a_call_runs_in_a_child_and_errors_read_as_in_a_thread(pool: ProcessPool) -> None:
    result = await pool.run("blocking-square", 6)
    assert result["square"] == 36
    assert result["pid"] != os.getpid()
    with pytest.raises(HandlerFailed, match=r"^ValueError: bad value 3$"):
        await pool.run("raises", 3)
    again = await pool.run("blocking-square", 2)
    assert again["pid"] == result["pid"]  # the process is reused after an error


async def test_cancelling_a_call_kills_its_process_and_the_next_call_gets_a_fresh_one(
    pool: ProcessPool,
) -> None:
    first = await pool.run("blocking-sleep", 0)
    call = asyncio.create_task(pool.run("blocking-sleep", 30))
    await _running(pool)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(ProcessLookupError):
        os.kill(first["pid"], 0)  # killed and reaped
    second = await asyncio.wait_for(pool.run("blocking-sleep", 0), 20)
    assert second["pid"] != first["pid"]


async def test_a_child_that_dies_mid_call_is_reported_and_replaced(pool: ProcessPool) -> None:
    first = await pool.run("blocking-sleep", 0)
    call = asyncio.create_task(pool.run("blocking-sleep", 30))
    await _running(pool)
    os.kill(first["pid"], 9)
    with pytest.raises(ProcessDied, match="exit code -9"):
        await asyncio.wait_for(call, 20)
    assert (await pool.run("blocking-square", 3))["square"] == 9
