"""The ``kubernetes`` lease backend against an emulated API server.

KMock's emulator stands in for a real Kubernetes API server here (see
:mod:`tests.k8s.apiserver`: it assigns ``resourceVersion``s and answers stale writes with 409
like a real one). The backend runs for real: the official ``kubernetes`` client, over HTTP,
in threads. Times are passed in explicitly, so expiry needs no sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mutirao.ha.kubernetes_lease import (
    SYNCED_ANNOTATION,
    URL_ANNOTATION,
    KubernetesLease,
    lease_from_object,
    lease_object,
)
from mutirao.ha.lease import Lease, Tenure
from tests.k8s.apiserver import ApiServer
from tests.k8s.conftest import NAMESPACE

LEASES = "coordination.k8s.io/v1/leases"
DURATION = 2.0
T0 = 1_000_000.0


@pytest.fixture
async def candidates(
    apiserver: ApiServer, kube_client: Callable[[], Any]
) -> AsyncIterator[Callable[..., KubernetesLease]]:
    """Makes lease backends (one per node) sharing the emulated API server."""
    made: list[KubernetesLease] = []

    def make(node: str, name: str = "leader", duration: float = DURATION) -> KubernetesLease:
        backend = KubernetesLease(
            NAMESPACE, name, node, duration, client=kube_client(), timeout=5.0
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def stored(apiserver: ApiServer, name: str = "leader") -> dict[str, Any]:
    obj: dict[str, Any] = apiserver.objects[LEASES, NAMESPACE, name].raw
    return obj


async def test_two_candidates_race_for_one_lease_and_exactly_one_wins(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server: creates and replaces race on resourceVersion."""
    for round_ in range(5):
        name = f"race-{round_}"
        nodes = [candidates(f"node-{i}", name) for i in range(4)]
        # A fresh Lease: every candidate tries to create it at once.
        won = await asyncio.gather(*(n.acquire(n.node, f"http://{n.node}", T0, 0) for n in nodes))
        winners = [lease for lease in won if lease is not None]
        assert len(winners) == 1, won
        obj = stored(apiserver, name)
        assert obj["spec"]["holderIdentity"] == winners[0].holder
        assert obj["spec"]["leaseTransitions"] == winners[0].epoch == 1
        assert obj["metadata"]["annotations"][URL_ANNOTATION] == f"http://{winners[0].holder}"

        # Once it expired, the others (all in sync) race to replace it: again one wins.
        others = [n for n in nodes if n.node != winners[0].holder]
        [holder] = [n for n in nodes if n.node == winners[0].holder]
        assert await holder.renew(winners[0], T0 + 0.05, [n.node for n in others])
        for n in others:
            assert await n.acquire(n.node, "", T0 + 0.1, 0) is None  # first sight: valid
        later = T0 + 0.1 + DURATION + 0.1
        won = await asyncio.gather(*(n.acquire(n.node, "", later, 0) for n in others))
        takers = [lease for lease in won if lease is not None]
        assert len(takers) == 1, won
        assert takers[0].epoch == 2
        assert stored(apiserver, name)["spec"]["holderIdentity"] == takers[0].holder


async def test_renew_that_hits_a_conflict_returns_none_and_the_holder_steps_down(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server; its first PUT of the Lease is made to fail with
    409 Conflict, as when another writer got there first."""
    a = candidates("a")
    lease = await a.acquire("a", "http://a", T0, 0)
    assert lease is not None
    version = stored(apiserver)["metadata"]["resourceVersion"]

    path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/leader"
    conflict = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409}
    apiserver["put", path][:1] << 409 << conflict
    assert await a.renew(lease, T0 + 0.5, []) is None
    assert stored(apiserver)["metadata"]["resourceVersion"] == version  # nothing written

    # The controller's side of it: a holder that cannot renew stops acting in time.
    tenure = Tenure(lease, T0, renew_interval=0.5, margin=0.5)
    assert tenure.lapsed(T0 + DURATION - 0.5)

    # Without the injected conflict the same renewal goes through.
    renewed = await a.renew(lease, T0 + 0.6, [])
    assert renewed is not None
    assert renewed.renewed_at == T0 + 0.6


async def test_a_renewal_after_someone_else_took_the_lease_returns_none(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server; b takes over while a was silent."""
    a, b = candidates("a"), candidates("b")
    lease = await a.acquire("a", "http://a", T0, 0)
    assert lease is not None
    lease = await a.renew(lease, T0 + 0.05, ["b"])
    assert lease is not None
    assert await b.acquire("b", "http://b", T0 + 0.1, 0) is None
    taken = await b.acquire("b", "http://b", T0 + 0.2 + DURATION, 0)
    assert taken is not None
    assert await a.renew(lease, T0 + 0.3 + DURATION, ["b"]) is None


async def test_expiry_hands_over_with_a_higher_epoch(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server. Expiry counts from when the standby saw the
    Lease change, on its own clock: a renewal it sees restarts the count."""
    a, b = candidates("a"), candidates("b")
    first = await a.acquire("a", "http://a", T0, 0)
    assert first is not None
    assert first.epoch == 1
    assert await b.acquire("b", "http://b", T0 + 0.5, 0) is None  # b first sees it at +0.5
    renewed = await a.renew(first, T0 + 1.0, ["b"])
    assert renewed is not None
    assert await b.acquire("b", "http://b", T0 + 1.2, 0) is None  # b sees the renewal at +1.2
    assert await b.acquire("b", "http://b", T0 + 1.2 + DURATION - 0.1, 0) is None
    taken = await b.acquire("b", "http://b", T0 + 1.2 + DURATION, 0)
    assert taken is not None
    assert (taken.holder, taken.epoch, taken.url) == ("b", 2, "http://b")
    spec = stored(apiserver)["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 2)
    assert spec["leaseDurationSeconds"] == 2
    assert await a.renew(renewed, T0 + 3.5, []) is None

    read = await a.read()
    assert read is not None
    assert (read.holder, read.epoch, read.synced) == ("b", 2, ("b",))


async def test_synced_annotation_is_respected_by_may_take(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server. The holder records which standbys hold every
    acknowledged record; after expiry only those may take over."""
    a, b, c = candidates("a"), candidates("b"), candidates("c")
    lease = await a.acquire("a", "http://a", T0, 3)
    assert lease is not None
    assert lease.epoch == 4
    lease = await a.renew(lease, T0 + 0.5, ["b"])
    assert lease is not None
    annotations = stored(apiserver)["metadata"]["annotations"]
    assert annotations[SYNCED_ANNOTATION] == "a,b"

    assert await c.acquire("c", "http://c", T0 + 0.6, 0) is None
    assert await b.acquire("b", "http://b", T0 + 0.6, 0) is None
    late = T0 + 0.6 + DURATION + 0.1
    assert await c.acquire("c", "http://c", late, 0) is None  # expired, but c is not synced
    taken = await b.acquire("b", "http://b", late, 9)
    assert taken is not None
    assert taken.epoch == 10  # above the floor b had seen


async def test_release_hands_the_lease_over_at_once(
    apiserver: ApiServer, candidates: Callable[..., KubernetesLease]
) -> None:
    """KMock stands in for a real API server. A clean shutdown empties holderIdentity."""
    a, b = candidates("a"), candidates("b")
    lease = await a.acquire("a", "http://a", T0, 0)
    assert lease is not None
    lease = await a.renew(lease, T0 + 0.1, ["b"])
    assert lease is not None
    await a.release(lease)
    obj = stored(apiserver)
    assert obj["spec"]["holderIdentity"] == ""
    assert URL_ANNOTATION not in obj["metadata"]["annotations"]
    taken = await b.acquire("b", "http://b", T0 + 0.2, 0)  # no waiting for expiry
    assert taken is not None
    assert taken.epoch == 2


async def test_an_unreachable_api_server_takes_nothing_and_fails_renewals() -> None:
    """No API server at all: acquiring gives nothing, a renewal raises ConnectionError (an
    OSError, which the controller retries until it must step down)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    backend = KubernetesLease(
        NAMESPACE,
        "leader",
        "a",
        DURATION,
        client=kubernetes.client.ApiClient(configuration),
        timeout=0.5,
    )
    try:
        assert await backend.acquire("a", "http://a", T0, 0) is None
        assert await backend.read() is None
        with pytest.raises(ConnectionError):
            await backend.renew(Lease("a", "http://a", 1, T0, DURATION), T0 + 0.5, [])
    finally:
        await backend.close()


def test_lease_object_round_trip() -> None:
    lease = Lease("orch-0", "http://orch-0.svc:7000", 5, T0, 2.5, ("orch-0", "orch-1"))
    obj = lease_object(lease, NAMESPACE, "leader", None)
    assert obj["spec"]["leaseDurationSeconds"] == 3  # whole seconds, rounded up
    assert obj["spec"]["renewTime"].endswith("Z")
    back = lease_from_object(obj, observed_at=T0 + 1)
    assert back == Lease("orch-0", "http://orch-0.svc:7000", 5, T0 + 1, 3.0, lease.synced)

    # Replacing keeps the object's metadata (resourceVersion: optimistic concurrency) and
    # other annotations, and the acquire time while the holder stays.
    previous = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "42"}}
    previous["metadata"]["annotations"] = {**obj["metadata"]["annotations"], "other": "x"}
    again = lease_object(Lease(**{**lease.__dict__, "renewed_at": T0 + 9}), "ns", "l", previous)
    assert again["metadata"]["resourceVersion"] == "42"
    assert again["metadata"]["annotations"]["other"] == "x"
    assert again["spec"]["acquireTime"] == obj["spec"]["acquireTime"]
    assert again["spec"]["renewTime"] != obj["spec"]["renewTime"]
