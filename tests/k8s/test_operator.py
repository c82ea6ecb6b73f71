"""The real kopf operator, in-process, against an emulated API server, driving real local
orchestrator and worker processes.

KMock's emulator stands in for a real Kubernetes API server (see :mod:`tests.k8s.apiserver`:
versions, 409s, finalizers and ``PUT`` behave as on a real one); everything else is real: kopf
runs the operator's handlers in its own thread and event loop (as ``kopf run`` does in a pod),
the operator talks HTTP to orchestrator and worker processes started with ``python -m
mutirao``, and in the leader-switch test those orchestrators elect their leader with the
``kubernetes`` lease backend on a Lease in the same emulated API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest

from mutirao.protocol import TaskView
from mutirao_operator.app import FINALIZER, register
from mutirao_operator.kube import Kube
from mutirao_operator.runtime import Runtime
from mutirao_operator.settings import OperatorSettings
from tests.integration.cluster import LocalCluster, Proc, eventually, free_port
from tests.k8s.apiserver import ApiServer
from tests.k8s.conftest import NAMESPACE, server_url, write_kubeconfig

pytestmark = pytest.mark.integration

TASKS = "mutirao.dev/v1/tasks"
TASKS_PATH = f"/apis/mutirao.dev/v1/namespaces/{NAMESPACE}/tasks"
SECRET = "a-token-key-shared-by-orchestrators-and-operator"
ORCHESTRATOR_LABELS = {
    "app.kubernetes.io/name": "mutirao",
    "app.kubernetes.io/component": "orchestrator",
}
LEADER_LABEL = "mutirao.dev/leader"


def operator_settings(cluster: LocalCluster) -> OperatorSettings:
    return OperatorSettings(
        urls=[cluster.url],
        token_secret=SECRET,
        namespace=NAMESPACE,
        lease_name="mutirao-leader",
        orchestrator_selector="app.kubernetes.io/component=orchestrator",
        metrics_host="127.0.0.1",
        metrics_port=0,
        poll_wait=2.0,
        retry_for=15.0,
    )


@contextlib.asynccontextmanager
async def running_operator(
    apiserver: ApiServer, settings: OperatorSettings
) -> AsyncIterator[Runtime]:
    """The operator's real handlers, run by kopf in a thread of its own; stopped on exit."""
    import kubernetes

    apiserver.history = 0  # kopf's timers and watches make many requests: match only new ones
    url = server_url(apiserver)
    registry = kopf.OperatorRegistry()
    started: list[Runtime] = []

    async def start() -> Runtime:
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        kube = Kube(kubernetes.client.ApiClient(configuration))
        runtime = await Runtime.start(settings, kube=kube)
        started.append(runtime)
        return runtime

    register(registry, start, interval=0.2)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, scheme="Bearer", token="test-token")

    @kopf.on.startup(registry=registry)
    def tune(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True  # the emulator cannot list namespaces
        settings.watching.reconnect_backoff = 0.1

    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    standalone=True,
                    namespaces=[NAMESPACE],
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        await eventually(
            lambda: _now(ready.is_set() or not thread.is_alive()), timeout=20, what="kopf ready"
        )
        assert started, f"the operator did not start: {failures}"
        yield started[0]
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive(), "kopf did not stop"
    assert not failures, failures


async def _now(value: Any) -> Any:
    return value


async def create(apiserver: ApiServer, kind: str, path: str, body: dict[str, Any]) -> str:
    body = {**body, "kind": kind}
    async with apiserver.post(path, json=body) as resp:
        created = await resp.json()
        assert resp.status in (200, 201), created
        uid: str = created["metadata"]["uid"]
        return uid


async def create_task(apiserver: ApiServer, name: str, spec: dict[str, Any]) -> str:
    body = {"apiVersion": "mutirao.dev/v1", "metadata": {"name": name}, "spec": spec}
    return await create(apiserver, "Task", TASKS_PATH, body)


def stored(apiserver: ApiServer, resource: str, name: str) -> dict[str, Any] | None:
    key = (kmock.resource(resource), NAMESPACE, name)
    if key not in apiserver.objects or apiserver.objects[key].deleted:
        return None
    obj: dict[str, Any] = apiserver.objects[key].raw
    return obj


def status(apiserver: ApiServer, name: str) -> dict[str, Any]:
    task = stored(apiserver, TASKS, name)
    assert task is not None, f"no Task {name}"
    result: dict[str, Any] = task.get("status") or {}
    return result


async def wait_phase(
    apiserver: ApiServer, name: str, *phases: str, timeout: float = 30
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        now = status(apiserver, name)
        return now if now.get("phase") in phases else None

    return await eventually(reached, timeout=timeout, what=f"Task {name} {'/'.join(phases)}")


async def events(apiserver: ApiServer) -> list[dict[str, Any]]:
    async with apiserver.get(f"/api/v1/namespaces/{NAMESPACE}/events") as resp:
        items: list[dict[str, Any]] = (await resp.json())["items"]
        return items


async def reasons(apiserver: ApiServer, name: str) -> list[str]:
    return [e["reason"] for e in await events(apiserver) if e["involvedObject"]["name"] == name]


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    return await eventually(check, timeout=timeout, what=what)


async def orchestrator_view(cluster: LocalCluster, task_id: str) -> TaskView:
    async with cluster.client(retry_for=30) as client:
        return await client.get(task_id)


def with_shared_secret(cluster: LocalCluster) -> LocalCluster:
    cluster.env_extra["MUTIRAO_AUTH_TOKEN_SECRET"] = SECRET
    return cluster


async def test_a_task_succeeds_with_its_result_in_status(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server; orchestrator, workers and kopf are real."""
    await with_shared_secret(cluster).start("W1", "W2")
    async with running_operator(apiserver, operator_settings(cluster)) as runtime:
        uid = await create_task(apiserver, "echo-hello", {"type": "echo", "payload": {"m": "olá"}})
        await create_task(apiserver, "sum-1-to-5", {"type": "sum", "payload": [1, 2, 3, 4, 5]})
        done = await wait_phase(apiserver, "echo-hello", "Succeeded")
        assert done["result"] == {"m": "olá"}
        assert done["attempts"] == 1
        assert done["worker"] in ("W1", "W2")
        assert done["startedAt"] <= done["completedAt"]
        assert done["epoch"] >= 1
        completed = {c["type"]: c for c in done["conditions"]}["Completed"]
        assert (completed["status"], completed["reason"]) == ("True", "Succeeded")
        assert (await wait_phase(apiserver, "sum-1-to-5", "Succeeded"))["result"] == 15

        # A spec the orchestrators refuse (the CRD's schema refuses this one already; the
        # emulator does not apply it) fails the Task for good.
        await create_task(apiserver, "no-type", {"type": ""})
        rejected = await wait_phase(apiserver, "no-type", "Failed")
        assert rejected["error"].startswith("rejected: type: expected `str` of length >= 1")
        assert "taskId" not in rejected

        # The orchestrator holds one task, keyed by the Task's uid, owned by the operator.
        view = await orchestrator_view(cluster, done["taskId"])
        assert (view["key"], view["owner"], view["state"]) == (uid, "mutirao-operator", "succeeded")

        # kopf's bookkeeping is in annotations (the strict status schema would prune it).
        task = stored(apiserver, TASKS, "echo-hello")
        assert task is not None
        assert FINALIZER in task["metadata"]["finalizers"]
        assert "kopf" not in task["status"]
        assert any(k.startswith("mutirao.dev/") for k in task["metadata"]["annotations"])

        async def posted() -> bool:
            return {"Submitted", "Succeeded"} <= set(await reasons(apiserver, "echo-hello"))

        await wait_for(posted, "Events Submitted and Succeeded")
        reconciled = runtime.metrics.registry.get_sample_value(
            "mutirao_operator_tasks_reconciled_total"
        )
        assert reconciled is not None
        assert reconciled >= 2
        metrics_url = f"http://127.0.0.1:{runtime.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
            text = await resp.text()
        assert "mutirao_operator_tasks_reconciled_total" in text
        assert f'mutirao_operator_following_info{{orchestrator="{cluster.url}"}} 1.0' in text
        assert "# TYPE mutirao_operator_errors_total counter" in text


async def test_kopf_run_as_the_chart_runs_it(
    apiserver: ApiServer, cluster: LocalCluster, tmp_path: Path
) -> None:
    """KMock stands in for a real API server. The operator as the Helm chart starts it: ``kopf
    run --module=mutirao_operator.handlers --standalone --all-namespaces --liveness=...`` in a
    process of its own, configured only by the chart's environment variables and a
    kubeconfig (kopf's and the operator's own Kubernetes clients both log in with it)."""
    await with_shared_secret(cluster).start("W1")
    apiserver.history = 0
    health, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", server_url(apiserver))),
        "MUTIRAO_URL": cluster.url,
        "MUTIRAO_AUTH_TOKEN_SECRET": SECRET,
        "MUTIRAO_OPERATOR_NAMESPACE": NAMESPACE,
        "MUTIRAO_OPERATOR_LEASE_NAME": "mutirao-leader",
        "MUTIRAO_OPERATOR_LEADER_LABEL": LEADER_LABEL,
        "MUTIRAO_OPERATOR_ORCHESTRATOR_SELECTOR": "app.kubernetes.io/component=orchestrator",
        "MUTIRAO_OPERATOR_METRICS_HOST": "127.0.0.1",
        "MUTIRAO_OPERATOR_METRICS_PORT": str(metrics),
    }
    argv = [
        sys.executable, "-m", "kopf", "run", "--module=mutirao_operator.handlers",
        "--standalone", "--all-namespaces", f"--liveness=http://127.0.0.1:{health}/healthz",
    ]  # fmt: skip
    cluster.procs.append(Proc("operator", argv, tmp_path / "operator.out", env).start())

    await create_task(apiserver, "sum-1-to-5", {"type": "sum", "payload": [1, 2, 3, 4, 5]})
    done = await wait_phase(apiserver, "sum-1-to-5", "Succeeded")
    assert done["result"] == 15
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{health}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
            text = await resp.text()
    assert f'mutirao_operator_following_info{{orchestrator="{cluster.url}"}} 1.0' in text


async def test_a_crashing_worker_shows_two_attempts_and_the_task_still_succeeds(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server; the worker really exits mid-task."""
    await with_shared_secret(cluster).start("W1", "W2")
    async with running_operator(apiserver, operator_settings(cluster)):
        await create_task(apiserver, "crash-drill", {"type": "echo", "payload": {"crash": True}})
        done = await wait_phase(apiserver, "crash-drill", "Succeeded", "Failed", timeout=40)
        assert done["phase"] == "Succeeded", done
        assert done["attempts"] == 2
        assert done["result"] == {"crash": True}
        view = await orchestrator_view(cluster, done["taskId"])
        assert [a["outcome"] for a in view["attempts"]] == ["lost", "succeeded"]


async def test_tasks_that_wait_for_other_tasks_by_name_take_their_results(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server. Tasks applied in any order: the one that
    waits is created first, names the others in ``after`` and ``{"$result": name}``, is
    submitted once they have task ids, and shows ``Waiting`` until they succeeded."""
    await with_shared_secret(cluster).start("W1")
    async with running_operator(apiserver, operator_settings(cluster)):
        naps = [{"$result": name, "path": "slept"} for name in ("nap-a", "nap-b")]
        await create_task(
            apiserver, "total", {"type": "sum", "payload": [*naps, 1], "after": ["nap-a"]}
        )
        # Long enough to outlast kopf's retry of "total" (2 s) even on a busy machine.
        await create_task(apiserver, "nap-a", {"type": "sleep", "payload": {"seconds": 5.0}})
        await create_task(apiserver, "nap-b", {"type": "sleep", "payload": {"seconds": 5.5}})
        waiting = await wait_phase(apiserver, "total", "Waiting")
        done = await wait_phase(apiserver, "total", "Succeeded", "Failed", "Cancelled")
        assert done["result"] == 11.5, done
        ids = [status(apiserver, name)["taskId"] for name in ("nap-a", "nap-b")]
        view = await orchestrator_view(cluster, waiting["taskId"])
        assert view["after"] == ids

        # One that waits for a Task the orchestrators refused is refused too.
        await create_task(apiserver, "bad", {"type": ""})
        await create_task(apiserver, "after-bad", {"type": "echo", "after": ["bad"]})
        refused = await wait_phase(apiserver, "after-bad", "Failed")
        assert refused["error"].startswith("rejected: dependency Task bad rejected"), refused


SCHEDULES = "mutirao.dev/v1/schedules"
SCHEDULES_PATH = f"/apis/mutirao.dev/v1/namespaces/{NAMESPACE}/schedules"


async def test_a_schedule_resource_becomes_an_orchestrator_schedule_with_cronjob_columns(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server; orchestrator, worker and kopf are real. A
    Schedule fires on the orchestrators, its status shows the last and next fire (the
    columns CronJob has), ``suspend`` pauses it, and deleting it removes it."""
    await with_shared_secret(cluster).start("W1")
    target = f"{NAMESPACE}.beat"
    async with running_operator(apiserver, operator_settings(cluster)):
        body = {
            "apiVersion": "mutirao.dev/v1",
            "metadata": {"name": "beat"},
            "spec": {"every": 1, "task": {"type": "echo", "payload": "tick"}},
        }
        await create(apiserver, "Schedule", SCHEDULES_PATH, body)

        async def fired_twice() -> dict[str, Any] | None:
            obj = stored(apiserver, SCHEDULES, "beat") or {}
            now = obj.get("status") or {}
            return now if now.get("fires", 0) >= 2 and now.get("nextFire") else None

        status = await wait_for(fired_twice, "two fires in the Schedule's status")
        assert status["schedule"] == "every 1s"
        assert status["lastFire"] < status["nextFire"]
        async with cluster.client(retry_for=30) as client:
            view = await client.request("GET", f"/v1/schedules/{target}")
            assert view["owner"] == "mutirao-operator"
            task = await client.get(status["lastTaskId"])
            assert task["key"].startswith(f"{target}@")
            assert task["payload"] == "tick"

            patch = {"spec": {"suspend": True}}
            async with apiserver.patch(
                f"{SCHEDULES_PATH}/beat",
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            ) as resp:
                assert resp.status == 200, await resp.text()

            async def paused() -> bool:
                view = await client.request("GET", f"/v1/schedules/{target}")
                return bool(view["paused"])

            await wait_for(paused, "the orchestrator schedule paused")
            async with apiserver.delete(f"{SCHEDULES_PATH}/beat") as resp:
                assert resp.status == 200, await resp.text()

            async def removed() -> bool:
                return (await client.request("GET", "/v1/schedules"))["schedules"] == []

            await wait_for(removed, "the orchestrator schedule removed")


async def test_deleting_a_running_task_cancels_it(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server: the finalizer keeps the Task until the
    operator cancelled its task on the real orchestrator."""
    await with_shared_secret(cluster).start("W1")
    async with running_operator(apiserver, operator_settings(cluster)):
        await create_task(apiserver, "long", {"type": "sleep", "payload": {"seconds": 60}})
        running = await wait_phase(apiserver, "long", "Running")
        async with apiserver.delete(f"{TASKS_PATH}/long") as resp:
            assert resp.status == 200, await resp.text()
        await wait_for(
            lambda: _now(stored(apiserver, TASKS, "long") is None), "the Task to be deleted"
        )
        view = await orchestrator_view(cluster, running["taskId"])
        assert view["state"] == "cancelled"
        assert "Cancelled" in await reasons(apiserver, "long")


async def test_a_restarted_operator_reconciles_unfinished_tasks(
    apiserver: ApiServer, cluster: LocalCluster
) -> None:
    """KMock stands in for a real API server. A Task left Running and one created while the
    operator was down both finish after it restarts, each as a single task."""
    await with_shared_secret(cluster).start("W1", "W2")
    settings = operator_settings(cluster)
    async with running_operator(apiserver, settings):
        uid = await create_task(apiserver, "slow", {"type": "sleep", "payload": {"seconds": 5}})
        task_id = (await wait_phase(apiserver, "slow", "Running"))["taskId"]
    await create_task(apiserver, "while-down", {"type": "sum", "payload": [20, 22]})
    async with cluster.client() as client:
        # "slow" finishes on the orchestrator while no operator watches.
        view = await client.wait(task_id, timeout=20)
    assert view["state"] == "succeeded"
    assert status(apiserver, "slow")["phase"] == "Running"
    assert status(apiserver, "while-down") == {}
    async with running_operator(apiserver, replace(settings)):
        slow = await wait_phase(apiserver, "slow", "Succeeded")
        assert (await wait_phase(apiserver, "while-down", "Succeeded"))["result"] == 42
    async with cluster.client() as client:
        keys = [t["key"] for t in await client.tasks(limit=1000)]
    assert keys.count(uid) == 1
    assert len(keys) == 2
    assert slow["attempts"] == 1


async def start_kubernetes_ha(apiserver: ApiServer, cluster: LocalCluster, tmp_path: Path) -> Proc:
    """Pods in the emulator, two orchestrator processes electing their leader on its Lease
    (the ``kubernetes`` backend, via a kubeconfig), two workers; returns the leader."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server_url(apiserver))
    cluster.env_extra.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "MUTIRAO_HA_BACKEND": "kubernetes",
            "MUTIRAO_HA_NAMESPACE": NAMESPACE,
            "MUTIRAO_HA_LEASE_NAME": "mutirao-leader",
            "MUTIRAO_HA_LEASE_DURATION": "4",
            "MUTIRAO_HA_RENEW_INTERVAL": "0.5",
            "MUTIRAO_HA_RETRY_INTERVAL": "0.2",
            "MUTIRAO_HA_STEP_DOWN_MARGIN": "2",
        }
    )
    with_shared_secret(cluster)
    pods = {"orchestrator": ORCHESTRATOR_LABELS, "backup": ORCHESTRATOR_LABELS}
    pods["worker-1"] = {"app.kubernetes.io/component": "worker"}
    for name, labels in pods.items():
        body = {"apiVersion": "v1", "metadata": {"name": name, "labels": labels}}
        await create(apiserver, "Pod", f"/api/v1/namespaces/{NAMESPACE}/pods", body)

    primary = cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_backup()
    async with cluster.client() as client:

        async def backup_synced() -> bool:
            info = await client.cluster()
            return any(s["node"] == "backup" and s["synced"] for s in info["standbys"])

        await wait_for(backup_synced, "the backup in sync")
    for wid in ("W1", "W2"):
        cluster.start_worker(wid)
    await cluster.wait_workers("W1", "W2")
    return primary


async def assert_each_ran_once(
    cluster: LocalCluster, uids: dict[str, str], finished: dict[str, dict[str, Any]]
) -> None:
    """On the new leader: one task per Task uid, with exactly one successful attempt."""
    async with cluster.client(retry_for=30) as client:
        tasks = await client.tasks(limit=1000)
        assert (await client.cluster())["node"] == "backup"
    for name, uid in uids.items():
        mine = [t for t in tasks if t["key"] == uid]
        assert len(mine) == 1, (name, mine)
        outcomes = [a["outcome"] for a in mine[0]["attempts"]]
        assert outcomes.count("succeeded") == 1, (name, outcomes)
        assert mine[0]["id"] == finished[name]["taskId"]


async def test_a_lease_holder_change_switches_orchestrators_and_every_task_completes_once(
    apiserver: ApiServer, cluster: LocalCluster, tmp_path: Path
) -> None:
    """KMock stands in for a real API server. Two real orchestrator processes elect their
    leader with the ``kubernetes`` lease backend on a Lease in it; the leader is SIGKILLed;
    the standby takes the Lease; the operator follows it, moves the leader label, and every
    Task, running or new, completes exactly once."""
    primary = await start_kubernetes_ha(apiserver, cluster, tmp_path)
    lease = stored(apiserver, "coordination.k8s.io/v1/leases", "mutirao-leader")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "orchestrator"
    first_epoch = lease["spec"]["leaseTransitions"]

    def labels(pod: str) -> dict[str, str]:
        obj = stored(apiserver, "v1/pods", pod)
        assert obj is not None
        return dict(obj["metadata"].get("labels") or {})

    async with running_operator(apiserver, operator_settings(cluster)) as runtime:
        await wait_for(
            lambda: _now(labels("orchestrator").get(LEADER_LABEL) == "true"),
            "the first leader's pod labelled",
        )
        names = [f"before-{i}" for i in range(6)]
        uids = {
            n: await create_task(apiserver, n, {"type": "sleep", "payload": {"seconds": 2}})
            for n in names
        }
        for name in names[:2]:
            await wait_phase(apiserver, name, "Running")

        primary.kill()
        late = "during-failover"
        uids[late] = await create_task(apiserver, late, {"type": "sum", "payload": [10, 20, 12]})

        await wait_for(
            lambda: _now(labels("backup").get(LEADER_LABEL) == "true"),
            "the new leader's pod labelled",
            timeout=30,
        )
        assert LEADER_LABEL not in labels("orchestrator")
        assert LEADER_LABEL not in labels("worker-1")
        assert runtime.leader == "backup"
        assert runtime.orch.url == cluster.backup_url
        lease = stored(apiserver, "coordination.k8s.io/v1/leases", "mutirao-leader")
        assert lease is not None
        assert lease["spec"]["leaseTransitions"] > first_epoch

        finished = {n: await wait_phase(apiserver, n, "Succeeded", timeout=40) for n in uids}
        assert finished[late]["result"] == 42
        assert all(s["epoch"] == lease["spec"]["leaseTransitions"] for s in finished.values())
        assert "LeaderChanged" in await reasons(apiserver, "mutirao-leader")
        following = runtime.metrics.registry.get_sample_value(
            "mutirao_operator_following_info", {"orchestrator": cluster.backup_url}
        )
        assert following == 1.0

    await assert_each_ran_once(cluster, uids, finished)
