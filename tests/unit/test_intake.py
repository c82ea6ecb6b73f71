"""Submissions arriving in one event-loop iteration share one engine command and record."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mutirao.errors import NotLeaderError, TooManyRequestsError, ValidationError
from mutirao.orchestrator.engine import Effects, Engine
from mutirao.orchestrator.intake import Intake
from mutirao.protocol import HelloMsg, TaskId, TaskSpec
from mutirao.settings import HeartbeatSettings


class Recorder:
    """Stands in for the orchestrator's journal: keeps the effects, durable at once (or
    failing, when told to)."""

    def __init__(self) -> None:
        self.executed: list[Effects] = []
        self.failure: Exception | None = None
        self.active = True

    def execute(self, effects: Effects) -> asyncio.Future[None]:
        self.executed.append(effects)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is None:
            future.set_result(None)
        else:
            future.set_exception(self.failure)
        return future

    def require_active(self) -> None:
        if not self.active:
            raise NotLeaderError("a standby", leader=None)


def _intake() -> tuple[Intake, Engine, Recorder]:
    counter = itertools.count(1)
    engine = Engine(HeartbeatSettings(), new_id=lambda: TaskId(f"t{next(counter)}"))
    hello: HelloMsg = {
        "op": "hello", "worker_id": "w1", "url": "", "slots": 8,
        "types": ["echo"], "running": [], "epoch": 0,
    }  # fmt: skip
    engine.hello(hello, 1, 0.0)
    recorder = Recorder()
    return (
        Intake(lambda: engine, recorder.execute, lambda: 5.0, recorder.require_active),
        engine,
        recorder,
    )


async def test_concurrent_submissions_make_one_record_per_owner() -> None:
    intake, engine, recorder = _intake()
    answers = await asyncio.gather(
        intake.submit([TaskSpec("echo", payload=1)], "alice"),
        intake.submit([TaskSpec("echo", payload=2), TaskSpec("echo", payload=3)], "alice"),
        intake.submit([TaskSpec("echo", payload=4)], "bob"),
    )
    assert [[t.payload for t in tasks] for tasks, _ in answers] == [[1], [2, 3], [4]]
    assert all(created for _, created in answers)
    assert [t.owner for t in answers[2][0]] == ["bob"]
    (effects,) = recorder.executed
    submits = [r for r in effects.records if r["e"] == "submit"]
    assert [len(r["tasks"]) for r in submits] == [3, 1], "one record per owner"
    assert engine.table.seq == 4


async def test_a_key_named_twice_in_one_flush_is_created_once() -> None:
    intake, engine, _ = _intake()
    (first, created_first), (second, created_second) = await asyncio.gather(
        intake.submit([TaskSpec("echo", key="k")], "alice"),
        intake.submit([TaskSpec("echo", key="k")], "alice"),
    )
    assert first[0] is second[0]
    assert (created_first, created_second) == (True, False)
    again, created = await intake.submit([TaskSpec("echo", key="k")], "alice")
    assert again[0] is first[0]
    assert created is False
    assert engine.table.seq == 1


async def test_errors_reach_only_the_requests_they_concern() -> None:
    intake, _, recorder = _intake()
    with pytest.raises(ValidationError) as info:
        await intake.submit([TaskSpec("echo"), TaskSpec("echo", resources={"gpu": "x"})], "al")
    assert info.value.field == "tasks[1].resources.gpu"
    assert not recorder.executed, "refused before anything was queued"

    recorder.failure = ConnectionError("stepped down")
    results = await asyncio.gather(
        intake.submit([TaskSpec("echo")], "alice"),
        intake.submit([TaskSpec("echo")], "bob"),
        return_exceptions=True,
    )
    assert all(isinstance(r, ConnectionError) for r in results)

    recorder.failure, recorder.active = None, False
    with pytest.raises(NotLeaderError):
        await intake.submit([TaskSpec("echo")], "alice")


async def test_a_quota_refuses_only_the_request_that_passes_it() -> None:
    """Requests of a user with a ``max_pending`` quota are engine commands of their own: the
    one that would pass it gets the 429, the one queued beside it goes through."""
    intake, engine, _ = _intake()
    engine.record({"e": "quota", "q": {"user": "alice", "max_pending": 2}})
    engine.record({"e": "limit", "l": {"type": "echo", "concurrency": 1}})
    first = await intake.submit([TaskSpec("echo")], "alice")  # runs: the cap lets one run
    results = await asyncio.gather(
        intake.submit([TaskSpec("echo"), TaskSpec("echo")], "alice"),
        intake.submit([TaskSpec("echo"), TaskSpec("echo")], "alice"),
        return_exceptions=True,
    )
    assert first[0][0].state == "assigned"
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], TooManyRequestsError)
    assert results[1].field == "max_pending"
    assert "max_pending quota is 2" in str(results[1])


async def test_a_request_gone_before_the_flush_does_not_stop_the_others() -> None:
    """A client that disconnects while its submission is queued: its task is still recorded
    (it may have been sent), and the requests queued with it are answered, also on error."""
    intake, engine, recorder = _intake()
    gone = asyncio.ensure_future(intake.submit([TaskSpec("echo", payload="gone")], "alice"))
    staying = asyncio.ensure_future(intake.submit([TaskSpec("echo", payload="here")], "alice"))
    await asyncio.sleep(0)  # both queued, the flush not yet run
    gone.cancel()
    (task,), created = await staying
    assert (task.payload, created) == ("here", True)
    assert engine.table.seq == 2

    recorder.active = False
    gone = asyncio.ensure_future(intake.submit([TaskSpec("echo")], "alice"))
    staying = asyncio.ensure_future(intake.submit([TaskSpec("echo")], "alice"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(NotLeaderError):
        await staying
