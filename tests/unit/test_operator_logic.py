"""The operator's pure decisions: Task spec -> submission, task view -> status and Events,
Lease -> leader and pod labels, and its settings from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from mutirao.protocol import AttemptView, TaskView
from mutirao_operator.leader import Leadership, label_changes, leadership_of, selector_matches
from mutirao_operator.reconcile import (
    Notice,
    Phase,
    is_terminal,
    status_from_view,
    status_patch,
    submission,
    transitions,
)
from mutirao_operator.settings import OperatorSettingsError, from_env

T0 = 1_800_000_000.0


def attempt(n: int, worker: str, outcome: str | None, started: float | None = T0) -> AttemptView:
    return {
        "attempt": n,
        "worker": worker,
        "assigned_at": T0,
        "started_at": started,
        "ended_at": None if outcome is None else T0 + 5,
        "outcome": outcome,
        "error": None,
    }


def view(state: str, attempts: list[AttemptView], **kw: Any) -> TaskView:
    base: TaskView = {
        "id": "t1",
        "type": "echo",
        "state": state,
        "owner": "mutirao-operator",
        "priority": 0,
        "max_attempts": 3,
        "timeout": 300.0,
        "key": "uid-1",
        "payload": {"m": 1},
        "created_at": T0,
        "finished_at": None,
        "attempts": attempts,
        "result": None,
        "error": None,
    }
    return {**base, **kw}  # type: ignore[typeddict-item]


def test_submission_maps_the_spec_and_keys_it_by_uid() -> None:
    spec = {"type": "sum", "payload": [1, 2], "priority": 5, "maxAttempts": 2, "timeoutSeconds": 9}
    assert submission(spec, "uid-1") == {
        "type": "sum",
        "payload": [1, 2],
        "key": "uid-1",
        "priority": 5,
        "max_attempts": 2,
        "timeout": 9.0,
    }
    assert submission({"type": "echo"}, "u") == {"type": "echo", "payload": None, "key": "u"}
    routed = {"type": "render", "queue": "gpu", "resources": {"gpu": 1, "memory": "4Gi"}}
    assert submission(routed, "u") == {
        "type": "render",
        "payload": None,
        "key": "u",
        "queue": "gpu",
        "resources": {"gpu": 1, "memory": "4Gi"},
    }


def test_status_follows_the_task_from_pending_to_succeeded() -> None:
    pending = status_from_view(view("pending", []), {}, epoch=3, generation=1, now=T0)
    assert pending["phase"] == "Pending"
    assert (pending["taskId"], pending["attempts"], pending["epoch"]) == ("t1", 0, 3)
    assert "worker" not in pending
    assert "startedAt" not in pending
    assert transitions({}, pending) == [Notice("Normal", "Submitted", "submitted as task t1")]

    running = status_from_view(
        view("running", [attempt(1, "W1", None)]), pending, epoch=3, generation=1, now=T0 + 1
    )
    assert (running["phase"], running["worker"], running["attempts"]) == ("Running", "W1", 1)
    assert running["startedAt"] == "2027-01-15T08:00:00Z"
    assert status_patch(pending, running).keys() == {
        "phase",
        "worker",
        "attempts",
        "startedAt",
        "conditions",
    }
    assert [n.reason for n in transitions(pending, running)] == ["Started"]
    submitted = {c["type"]: c for c in running["conditions"]}["Submitted"]
    assert submitted["lastTransitionTime"] == "2027-01-15T08:00:00Z"  # unchanged since pending

    done = status_from_view(
        view(
            "succeeded",
            [attempt(1, "W1", "lost"), attempt(2, "W2", "succeeded")],
            finished_at=T0 + 7,
            result=15,
        ),
        running,
        epoch=4,
        generation=1,
        now=T0 + 7,
    )
    assert done["phase"] == "Succeeded"
    assert (done["result"], done["attempts"], done["worker"], done["epoch"]) == (15, 2, "W2", 4)
    assert done["completedAt"] == "2027-01-15T08:00:07Z"
    assert is_terminal(done)
    assert transitions(running, done) == [
        Notice("Normal", "Succeeded", "succeeded on W2 after 2 attempts")
    ]
    completed = {c["type"]: c for c in done["conditions"]}["Completed"]
    assert (completed["status"], completed["reason"]) == ("True", "Succeeded")


@pytest.mark.parametrize(
    ("state", "error", "phase", "reason"),
    [
        ("failed", "ValueError: bad", "Failed", "Failed"),
        ("cancelled", None, "Cancelled", "Cancelled"),
    ],
)
def test_failed_and_cancelled_tasks_carry_an_error(
    state: str, error: str | None, phase: str, reason: str
) -> None:
    old = {"phase": "Running", "taskId": "t1", "attempts": 1, "worker": "W1"}
    new = status_from_view(
        view(state, [attempt(1, "W1", state)], error=error, finished_at=T0 + 1),
        old,
        epoch=1,
        generation=None,
        now=T0,
    )
    assert new["phase"] == phase
    assert new["error"] == (error or "cancelled")
    assert "result" not in new
    assert [n.reason for n in transitions(old, new)] == [reason]


def test_a_retry_is_an_event_and_a_patch_removes_stale_fields() -> None:
    old = {"phase": "Running", "taskId": "t1", "attempts": 1, "worker": "W1", "error": "x"}
    new = {"phase": "Running", "taskId": "t1", "attempts": 2, "worker": "W2"}
    assert transitions(old, new) == [Notice("Warning", "Retrying", "attempt 2 on W2")]
    assert status_patch(old, new) == {"attempts": 2, "worker": "W2", "error": None}
    requeued = {"phase": "Pending", "taskId": "t1", "attempts": 1}
    assert [n.reason for n in transitions(old, requeued)] == ["Retrying"]
    moved = {**old, "taskId": "t2"}
    assert transitions(old, moved) == [Notice("Warning", "Resubmitted", "now task t2")]
    assert status_patch(old, old) == {}
    assert Phase.SUCCEEDED == "Succeeded"


def lease(holder: str, url: str = "", transitions_: int = 3) -> dict[str, Any]:
    annotations = {"mutirao.dev/url": url} if url else {}
    return {
        "metadata": {"name": "mutirao-leader", "annotations": annotations},
        "spec": {"holderIdentity": holder, "leaseTransitions": transitions_},
    }


def test_leadership_of_a_lease() -> None:
    assert leadership_of(lease("o-1", "http://o-1:7000")) == Leadership("o-1", "http://o-1:7000", 3)
    assert leadership_of(lease("o-1"), "mutirao-orchestrator-headless", 7000) == Leadership(
        "o-1", "http://o-1.mutirao-orchestrator-headless:7000", 3
    )
    assert leadership_of(lease("o-1"), "headless", 7000, "https") == Leadership(
        "o-1", "https://o-1.headless:7000", 3
    )
    assert leadership_of(lease("")) is None  # released
    assert leadership_of({"metadata": {"name": "x"}}) is None


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def test_label_changes_move_the_leader_label_removals_first() -> None:
    label = "mutirao.dev/leader"
    pods = [pod("o-0", **{label: "true"}), pod("o-1"), pod("o-2", **{label: "false"})]
    assert label_changes(pods, "o-1", label) == [("o-0", None), ("o-2", None), ("o-1", "true")]
    assert label_changes([pod("o-1", **{label: "true"}), pod("o-0")], "o-1", label) == []


def test_selector_matches() -> None:
    obj = pod("o-0", **{"app.kubernetes.io/component": "orchestrator", "tier": "a"})
    assert selector_matches(obj, "app.kubernetes.io/component=orchestrator,tier==a")
    assert selector_matches(obj, "tier, app.kubernetes.io/component!=worker")
    assert not selector_matches(obj, "app.kubernetes.io/component=worker")
    assert not selector_matches(obj, "missing")
    assert not selector_matches(obj, "tier!=a")


def test_settings_from_the_environment() -> None:
    settings = from_env(
        {
            "MUTIRAO_URL": "http://a:7000, http://b:7000",
            "MUTIRAO_AUTH_TOKEN_SECRET": "key",
            "MUTIRAO_OPERATOR_NAMESPACE": "mutirao",
            "MUTIRAO_OPERATOR_LEASE_NAME": "r-leader",
            "MUTIRAO_OPERATOR_ORCHESTRATOR_PORT": "7001",
            "MUTIRAO_OPERATOR_POLL_WAIT": "2.5",
            "MUTIRAO_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.urls == ["http://a:7000", "http://b:7000"]
    assert (settings.token_secret, settings.namespace, settings.lease_name) == (
        "key",
        "mutirao",
        "r-leader",
    )
    assert (settings.orchestrator_port, settings.poll_wait) == (7001, 2.5)
    with pytest.raises(OperatorSettingsError, match="MUTIRAO_AUTH_TOKEN_SECRET"):
        from_env({})
    with pytest.raises(OperatorSettingsError, match="MUTIRAO_OPERATOR_METRICS_PORT"):
        from_env({"MUTIRAO_TOKEN": "t", "MUTIRAO_OPERATOR_METRICS_PORT": "x"})
