"""A task's trace across a worker kill and a retry, with the OpenTelemetry SDK's in-memory
exporter: the engine (sans-IO) records the task's life as the leader does, the real
:class:`~mutirao.worker.runner.Runner` runs the handler of the attempt that succeeds inside
its span, and the handler opens a span of its own; then the leader's spans are emitted as
the orchestrator does once the end is durable. The tree must be: the caller's span, the
task, its queue wait and both attempts (the first lost with its worker), the handler's run
under the second attempt, and the handler's own span under that."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mutirao.protocol import ResultItem, TaskSpec
from mutirao.registry import Registry, task
from mutirao.tracing import Tracing
from mutirao.worker.runner import Runner
from tests.unit.test_engine import Harness, assigned

CALLER_TRACE, CALLER_SPAN = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"


async def _run_on_worker(tracing: Tracing, item: Any) -> ResultItem:
    registry = Registry()

    @task("resize", registry=registry)
    async def resize(payload: Any) -> dict[str, int]:
        with trace.get_tracer("user-code").start_as_current_span("scale image"):
            return {"w": payload["w"] // 2}

    results: list[ResultItem] = []
    ended = asyncio.Event()

    def on_result(result: ResultItem) -> None:
        results.append(result)
        ended.set()

    runner = Runner(registry, 2, allow_crash=False, on_result=on_result, tracing=tracing)
    runner.start(item)
    await asyncio.wait_for(ended.wait(), 10)
    await runner.close()
    return results[0]


async def test_the_span_tree_of_a_task_across_a_worker_kill_and_a_retry() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing("test", exporter, batch=False)
    trace.set_tracer_provider(tracing.provider)  # what the handler's own tracer uses
    h = Harness()
    h.hello("w1", 0.0, types=["resize"])
    (t,), effects = h.submit(TaskSpec("resize", {"w": 64}, trace=TRACEPARENT), now=1.0)
    assert assigned(effects) == {"w1": [(t.id, 1)]}
    h.lost("w1", 2.0, "SIGKILL")  # the worker dies mid-attempt
    effects = h.hello("w2", 2.5, types=["resize"])
    [item] = [i for m in effects.sends["w2"] if m["op"] == "assign" for i in m["items"]]
    assert item[5] == TRACEPARENT, "the trace context travels with the attempt"
    result = await _run_on_worker(tracing, item)
    h.result("w2", t, 2, 3.0, value=result[3])
    assert t.state == "succeeded"
    tracing.finished([t])

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {
        "task resize", "queue wait", "attempt 1", "attempt 2", "run resize", "scale image"
    }  # fmt: skip
    assert {s.context.trace_id for s in spans.values()} == {CALLER_TRACE}

    def parent(name: str) -> int | None:
        found = spans[name].parent
        return None if found is None else found.span_id

    root = spans["task resize"].context.span_id
    assert parent("task resize") == CALLER_SPAN
    assert parent("queue wait") == parent("attempt 1") == parent("attempt 2") == root
    assert parent("run resize") == spans["attempt 2"].context.span_id
    assert parent("scale image") == spans["run resize"].context.span_id
    first = spans["attempt 1"].attributes or {}
    assert (first["mutirao.worker"], first["mutirao.outcome"]) == ("w1", "lost")
    assert "SIGKILL" in str(first["mutirao.error"])
    assert (spans["attempt 2"].attributes or {})["mutirao.outcome"] == "succeeded"
    assert spans["task resize"].start_time == 1_000_000_000
    assert spans["task resize"].end_time == 3_000_000_000
    tracing.shutdown()


def test_without_a_caller_the_trace_comes_from_the_task() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing("test", exporter, batch=False)
    h = Harness()
    h.hello("w1", 0.0)
    (t,), _ = h.submit(TaskSpec("echo", 1), now=1.0)
    h.result("w1", t, 1, 2.0, value=1)
    tracing.finished([t])
    tracing.finished([t])  # emitted again (a resent end): the same ids, one trace
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert len({s.context.span_id for s in spans}) == 3  # task, queue wait, attempt 1
    roots = [s for s in spans if s.name == "task echo"]
    assert all(s.parent is None for s in roots)
