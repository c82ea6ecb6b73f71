#!/usr/bin/env bash
# End-to-end check of Mutirão on a kind cluster (`make e2e-kind`, which first runs
# `make kind-up kind-load helm-install`). Needs Docker and kind; it cannot run in CI here.
#
#   1. waits for the orchestrators, workers and operator, and for a labelled leader;
#   2. applies the example Tasks (manifests/examples/) and waits for each to be Succeeded;
#      the crash drill must show at least 2 attempts (helm-install sets workers.allowCrash);
#   3. starts a long Task, deletes the leader orchestrator pod while it runs, applies a new
#      batch at once, and checks that another pod took the Lease over, that the new batch
#      and the running Task succeed, and that the first batch is still Succeeded.
#
# Environment: KUBECTL (default tools/bin/kubectl), KUBE_CONTEXT (kind-mutirao), RELEASE
# (mutirao), NAMESPACE of the release (mutirao), TASKS_NAMESPACE (mutirao-e2e), TIMEOUT (180s).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kubectl="${KUBECTL:-$root/tools/bin/kubectl}"
context="${KUBE_CONTEXT:-kind-mutirao}"
release="${RELEASE:-mutirao}"
namespace="${NAMESPACE:-mutirao}"
tasks_namespace="${TASKS_NAMESPACE:-mutirao-e2e}"
timeout="${TIMEOUT:-180s}"

# The chart's resource-name prefix (templates/_helpers.tpl, "mutirao.fullname").
fullname="$release"
[[ "$release" == *mutirao* ]] || fullname="$release-mutirao"
lease="$fullname-leader"

k() { "$kubectl" --context "$context" "$@"; }
step() { echo "e2e-kind: $*"; }
fail() {
    echo "e2e-kind: FAILED: $*" >&2
    k -n "$tasks_namespace" get tasks -o wide >&2 || true
    k -n "$namespace" get pods -L mutirao.dev/leader >&2 || true
    exit 1
}

holder() {
    k -n "$namespace" get lease "$lease" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true
}

# Prints the leader pod once the Lease has a holder that is not $1 and the operator has
# labelled that pod mutirao.dev/leader=true.
wait_for_leader() {
    local previous="${1:-}" pod label
    for _ in $(seq 1 90); do
        pod="$(holder)"
        if [[ -n "$pod" && "$pod" != "$previous" ]]; then
            label="$(k -n "$namespace" get pod "$pod" \
                -o jsonpath='{.metadata.labels.mutirao\.dev/leader}' 2>/dev/null || true)"
            if [[ "$label" == "true" ]]; then
                echo "$pod"
                return 0
            fi
        fi
        sleep 2
    done
    return 1
}

wait_succeeded() {
    k -n "$tasks_namespace" wait --for=jsonpath='{.status.phase}'=Succeeded \
        --timeout="$timeout" "$@" || fail "not Succeeded: $*"
}

field() {
    k -n "$tasks_namespace" get task "$1" -o jsonpath="{$2}"
}

step "waiting for the release $release in namespace $namespace"
k wait --for=condition=Established --timeout=60s crd/tasks.mutirao.dev crd/schedules.mutirao.dev
k -n "$namespace" rollout status "statefulset/$fullname-orchestrator" --timeout="$timeout"
k -n "$namespace" rollout status "deployment/$fullname-worker" --timeout="$timeout"
k -n "$namespace" rollout status "deployment/$fullname-operator" --timeout="$timeout"
leader="$(wait_for_leader)" || fail "no leader: Lease $lease has no holder labelled by the operator"
transitions="$(k -n "$namespace" get lease "$lease" -o jsonpath='{.spec.leaseTransitions}')"
step "leader is $leader (Lease $lease, transitions ${transitions:-0})"

step "batch 1: the example Tasks in namespace $tasks_namespace"
k create namespace "$tasks_namespace" --dry-run=client -o yaml | k apply -f -
k -n "$tasks_namespace" delete tasks --all --ignore-not-found --wait --timeout="$timeout"
k -n "$tasks_namespace" apply -f "$root/manifests/examples/"
wait_succeeded task -l mutirao.dev/example=true
[[ "$(field sum-1-to-5 .status.result)" == "15" ]] || fail "sum-1-to-5: result is not 15"
attempts="$(field crash-drill .status.attempts)"
((${attempts:-0} >= 2)) || fail "crash-drill: $attempts attempt(s), expected a crash then a retry"
k -n "$tasks_namespace" get tasks

step "failover: delete the leader pod $leader while a Task runs"
k -n "$tasks_namespace" apply -f - <<'EOF'
apiVersion: mutirao.dev/v1
kind: Task
metadata:
  name: during-failover
spec:
  type: sleep
  payload:
    seconds: 20
EOF
k -n "$tasks_namespace" wait --for=jsonpath='{.status.phase}'=Running \
    --timeout="$timeout" task/during-failover || fail "during-failover never Running"
k -n "$namespace" delete pod "$leader" --wait=false
k -n "$tasks_namespace" apply -f - <<'EOF'
apiVersion: mutirao.dev/v1
kind: Task
metadata:
  name: after-failover-echo
  labels:
    mutirao.dev/batch: after-failover
spec:
  type: echo
  payload:
    message: still here
---
apiVersion: mutirao.dev/v1
kind: Task
metadata:
  name: after-failover-sum
  labels:
    mutirao.dev/batch: after-failover
spec:
  type: sum
  payload: [10, 20, 12]
---
apiVersion: mutirao.dev/v1
kind: Task
metadata:
  name: after-failover-sleep
  labels:
    mutirao.dev/batch: after-failover
spec:
  type: sleep
  payload:
    seconds: 1
EOF
new_leader="$(wait_for_leader "$leader")" || fail "no new leader after deleting $leader"
new_transitions="$(k -n "$namespace" get lease "$lease" -o jsonpath='{.spec.leaseTransitions}')"
((${new_transitions:-0} > ${transitions:-0})) || fail "Lease $lease: leaseTransitions did not grow"
step "new leader is $new_leader (transitions $new_transitions)"

wait_succeeded task -l mutirao.dev/batch=after-failover
wait_succeeded task/during-failover
[[ "$(field after-failover-sum .status.result)" == "42" ]] || fail "after-failover-sum: not 42"
wait_succeeded task -l mutirao.dev/example=true
k -n "$tasks_namespace" get tasks -o wide
step "passed: every Task succeeded across the failover from $leader to $new_leader"
