"""Workflows on real processes: chains, groups and chords submitted as one batch, results
as inputs, failures cancelling what waits, the CLI's ``--after`` and ``graph``, and a DAG
half run when the active orchestrator is SIGKILLed, finished by its standby with every
step recorded once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mutirao import chain, chord, group, result_of, sig
from mutirao.client.canvas import StepFailed
from mutirao.client.http import ApiError
from mutirao.protocol import TaskView
from tests.integration.cluster import LocalCluster, eventually
from tests.integration.scrape import scrape, value
from tests.integration.test_cli import Cli, cli_env


def _ran_once(view: TaskView) -> bool:
    outcomes = [a["outcome"] for a in view["attempts"]]
    return view["state"] == "succeeded" and outcomes.count("succeeded") == 1


async def test_a_chord_of_chains_runs_with_results_as_inputs(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    doubles = [sig("sum", [i, i]) for i in range(1, 6)]
    first, piped = sig("echo", "to be or not"), sig("echo")
    words = sig("wordcount", "to be or not to be")
    callback = sig(
        "echo",
        {
            "doubles": [result_of(s) for s in doubles],
            "be": result_of(words, "be"),
            "not_an_input": {"$result": "ignored", "extra": "so left as it is"},
        },
        after=[words],
    )
    async with cluster.client() as client:
        workflow = await client.submit_workflow(
            chord(group(*doubles, chain(first, piped)), callback)
        )
        final = await client.wait(workflow.last, timeout=30)
        views = await client.wait_many(workflow.ids, timeout=5)
    assert final["state"] == "succeeded", final
    assert final["result"] == {
        "doubles": [2, 4, 6, 8, 10],
        "be": 2,
        "not_an_input": {"$result": "ignored", "extra": "so left as it is"},
    }
    assert all(_ran_once(v) for v in views), views
    by_id = {v["id"]: v for v in views}
    # The chain's second step had no payload: it took the first step's result.
    assert by_id[workflow[piped]]["result"] == "to be or not"
    assert by_id[workflow[words]]["after"] == [], "an extra step waits for nothing else"
    assert set(final["after"]) == {workflow[s] for s in [*doubles, piped, words]}


async def test_refused_refs_name_the_field_and_record_nothing(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    await cluster.add_user("bob", "bob-password-1")
    async with cluster.client() as admin:
        theirs = (await admin.submit("echo", 1))["id"]
    async with cluster.client(token=cluster.token("carol", admin=False)) as client:
        before = len(await client.tasks(limit=1000))
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"tasks": [{"type": "echo", "after": ["#1"]}, {"type": "echo", "after": ["#0"]}]},
             "tasks[0].after", "cycle"),
            ({"tasks": [{"type": "echo"}, {"type": "echo", "after": ["#7"]}]},
             "tasks[1].after", "no item"),
            ({"type": "echo", "after": ["no-such-task"]}, "after", "no task"),
            ({"type": "echo", "payload": {"x": {"$result": theirs}}}, "after", "no task"),
            ({"type": "echo", "payload": {"x": {"$result": 5}}}, "payload", "$result"),
        ]  # fmt: skip
        for body, field, words in cases:
            with pytest.raises(ApiError) as err:
                await client.request("POST", "/v1/tasks", body)
            assert err.value.status == 400, (body, err.value.body)
            assert err.value.body["field"] == field, (body, err.value.body)
            assert words in err.value.body["message"], (body, err.value.body)
        with pytest.raises(ApiError) as err:
            await client.request("POST", "/v1/tasks", {"type": "echo", "on_failure": "ignore"})
        assert (err.value.status, err.value.body["field"]) == (422, "on_failure")
        assert len(await client.tasks(limit=1000)) == before, "nothing was recorded"


async def test_a_failure_cancels_its_dependents_and_a_cleanup_step_sees_it(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1")
    failing = sig("fail", {"message": "disk on fire"}, max_attempts=1)
    downstream = sig("echo", "never")
    cleanup = sig("echo", {"saw": result_of(failing)}, on_failure="run")
    async with cluster.client() as client:
        workflow = await client.submit_workflow(
            group(chain(failing, downstream, sig("echo", "never either")), cleanup)
        )
        views = {v["id"]: v for v in await client.wait_many(workflow.ids, timeout=30)}
        metrics = await scrape(cluster.url)
    failed = views[workflow[failing]]
    assert failed["state"] == "failed"
    async with cluster.client() as client:
        assert await workflow.handle(cleanup).result(client) == {
            "saw": {"$error": failed["error"], "id": failed["id"], "state": "failed"}
        }
        with pytest.raises(StepFailed) as err:
            await workflow.handle(downstream).result(client)
    assert err.value.args == (
        workflow[downstream],
        "cancelled",
        views[workflow[downstream]]["error"],
    )
    for step in workflow.ids[1:3]:
        assert views[step]["state"] == "cancelled"
        assert views[step]["error"] == f"dependency {failed['id']} failed: {failed['error']}"
        assert views[step]["attempts"] == []
    assert views[workflow[cleanup]]["result"] == {
        "saw": {"$error": failed["error"], "id": failed["id"], "state": "failed"}
    }
    assert value(metrics, "mutirao_tasks_dependency_cancelled_total", type="echo") == 2
    assert value(metrics, "mutirao_tasks", state="waiting") == 0


async def test_cancelling_a_step_cancels_what_waits_and_the_cli_draws_the_graph(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    await cluster.start("W1")
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path)
    first = await cli("submit", "sleep", "--payload", "30")
    assert first.code == 0, first
    slow = first.out.strip()
    second = await cli("submit", "echo", "--payload", '{"after": "slow"}', "--after", slow)
    assert second.code == 0, second
    waiting = second.out.strip()
    third = asyncio.create_task(
        cli("submit", "echo", "--after", waiting, "--after", slow, "--wait")
    )
    async with cluster.client() as client:

        async def both_wait() -> list[TaskView]:
            listed = await client.tasks(state="waiting")
            return listed if len(listed) == 2 else []

        last = (await eventually(both_wait, timeout=10, what="two tasks waiting"))[0]["id"]
        await client.cancel(slow)
    run = await third
    assert run.code == 1, run
    assert f"task {last} cancelled: dependency {slow} cancelled" in run.err, run
    graph = await cli("graph", last)
    assert graph.code == 0, graph
    lines = graph.out.splitlines()
    assert "echo  cancelled: dependency" in lines[0], graph
    assert any(line.startswith("├─ ") and waiting in line for line in lines), graph
    assert any(slow in line and "(above)" in line for line in lines), graph
    assert lines[-1] == "3 task(s): 3 cancelled", graph


async def test_a_dag_half_run_when_the_active_dies_finishes_with_each_step_once(
    cluster: LocalCluster,
) -> None:
    """Eight chains of five 0.3 s steps, each taking the last one's result as its input,
    and a sum over the chains; the active is SIGKILLed once some steps ran and others
    still wait. The standby takes over and finishes the graph."""
    await cluster.start_ha("W1", "W2")
    chains = []
    for _ in range(8):
        steps = [sig("sleep", {"seconds": 0.3})]
        for _ in range(4):
            steps.append(sig("sleep", {"seconds": result_of(steps[-1], "slept")}))
        chains.append(chain(*steps))
    ends = [c.steps[-1] for c in chains]
    total = sig("sum", [result_of(end, "slept") for end in ends])
    flow = chord(group(*chains), total)
    async with cluster.client(retry_for=30) as client:
        workflow = await client.submit_workflow(flow)

        async def half_run() -> bool:
            counts = (await client.cluster())["tasks"]
            return counts["succeeded"] >= 8 and counts["waiting"] >= 8

        await eventually(half_run, timeout=30, what="some steps done, others waiting")
        cluster.proc("orchestrator").kill()
        final = await client.wait(workflow.last, timeout=60)
        views = await client.wait_many(workflow.ids, timeout=10)
        info = await client.cluster()
    assert info["node"] == "backup", info
    assert final["state"] == "succeeded", final
    assert final["result"] == pytest.approx(8 * 0.3)
    assert len(views) == 41
    assert all(_ran_once(v) for v in views), [v for v in views if not _ran_once(v)]


async def test_waiting_tasks_are_listed_by_state(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    async with cluster.client() as client:
        slow = await client.submit("sleep", 30)
        waiting = await client.submit("echo", after=[slow["id"]])
        listed = await client.tasks(state="waiting")
        await client.cancel(slow["id"])
        view = await client.wait(waiting["id"], timeout=10)
    assert [t["id"] for t in listed] == [waiting["id"]]
    assert waiting["state"] == "waiting"
    assert view["state"] == "cancelled"
