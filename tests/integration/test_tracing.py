"""Tracing on real processes: an orchestrator and a worker with
``MUTIRAO_TRACING_EXPORTER=console`` (the SDK's console exporter: spans as JSON on stdout)
run a task submitted with a caller's traceparent; the orchestrator's output holds the
task's spans and the worker's its handler span, all in the caller's trace, the handler's
under the attempt's. (The span tree across a worker kill and a retry is
tests/unit/test_tracing.py's, with the in-memory exporter.)"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.integration.cluster import LocalCluster, eventually

TRACE, CALLER = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _spans(output: str) -> dict[str, Any]:
    """The spans the console exporter printed (indented JSON objects), by name."""
    found = {}
    for block in re.findall(r"^\{\n.*?^\}$", output, re.M | re.S):
        span = json.loads(block)
        found[span["name"]] = span
    return found


async def test_a_task_traced_from_its_caller_to_its_handler(cluster: LocalCluster) -> None:
    cluster.env_extra.update(
        {"MUTIRAO_TRACING_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    await cluster.start("W1")
    async with cluster.client() as client:
        task = await client.submit("sum", [2, 3], trace=f"00-{TRACE}-{CALLER}-01", wait=10)
    assert task["result"] == 5

    async def exported() -> bool:
        leader = _spans(cluster.proc("orchestrator").output())
        return "task sum" in leader and "run sum" in _spans(cluster.proc("worker-W1").output())

    await eventually(exported, timeout=15, what="the spans exported by both processes")
    leader = _spans(cluster.proc("orchestrator").output())
    worker = _spans(cluster.proc("worker-W1").output())
    spans = {**leader, **worker}
    assert {"task sum", "queue wait", "attempt 1", "run sum"} <= set(spans)
    assert {s["context"]["trace_id"] for s in spans.values()} == {f"0x{TRACE}"}
    root = spans["task sum"]
    assert root["parent_id"] == f"0x{CALLER}"
    assert spans["attempt 1"]["parent_id"] == root["context"]["span_id"]
    assert spans["run sum"]["parent_id"] == spans["attempt 1"]["context"]["span_id"]
    assert spans["attempt 1"]["attributes"]["mutirao.worker"] == "W1"


async def test_a_blocking_handlers_own_spans_nest_from_its_slot_process(
    cluster: LocalCluster,
) -> None:
    """A plain (blocking) handler runs in a slot process: the worker sends it the span
    context, and the span the handler opens there is a child of the worker's run span."""
    cluster.env_extra.update(
        {"MUTIRAO_TRACING_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_worker("W1", extra=("--tasks", "tests.integration.fixtures.user_tasks"))
    await cluster.wait_workers("W1")
    async with cluster.client() as client:
        task = await client.submit("traced-square", 7, trace=f"00-{TRACE}-{CALLER}-01", wait=10)
    assert task["result"] == 49

    async def exported() -> bool:
        return "square it" in _spans(cluster.proc("worker-W1").output())

    await eventually(exported, timeout=15, what="the handler's own span, from its process")
    spans = _spans(cluster.proc("worker-W1").output())
    assert spans["square it"]["context"]["trace_id"] == f"0x{TRACE}"
    assert spans["square it"]["parent_id"] == spans["run traced-square"]["context"]["span_id"]
