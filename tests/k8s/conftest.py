"""Fixtures for the Kubernetes side: KMock's emulator standing in for a real API server
(made strict about versions by :class:`tests.k8s.apiserver.ApiServer`), API clients for it,
and a real local cluster of orchestrator and worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest

from tests.k8s.apiserver import ApiServer

NAMESPACE = "mutirao-test"


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm keeps config and cache under HOME: give it an empty one."""
    return {**os.environ, "HOME": str(tmp_path_factory.mktemp("helm-home"))}


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApiServer}


@pytest.fixture
async def apiserver(kmock: ApiServer) -> ApiServer:
    """The emulated API server, serving the resources the operator and the orchestrators use
    (discovery comes only from these declarations, not from CRD objects). It keeps every
    request (KMock's default); long-running tests set ``apiserver.history = 0``."""
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    kmock.resources["mutirao.dev/v1/tasks"] = kmock.ResourceInfo(
        kind="Task",
        singular="task",
        shortnames={"mtask"},
        namespaced=True,
        verbs=verbs,
        subresources={"status"},
    )
    kmock.resources["mutirao.dev/v1/schedules"] = kmock.ResourceInfo(
        kind="Schedule",
        singular="schedule",
        shortnames={"msched"},
        namespaced=True,
        verbs=verbs,
        subresources={"status"},
    )
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=verbs
    )
    kmock.resources["v1/pods"] = kmock.ResourceInfo(
        kind="Pod", singular="pod", namespaced=True, verbs=verbs
    )
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(
        kind="Secret", singular="secret", namespaced=True, verbs=verbs
    )
    kmock.resources["v1/events"] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs=verbs
    )
    kmock.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(
        kind="Lease", singular="lease", namespaced=True, verbs=verbs
    )
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False,
        verbs=verbs,
    )  # fmt: skip
    kmock.objects["v1/namespaces", None, NAMESPACE] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE},
    }
    return kmock


def server_url(server: kmock.KubernetesEmulator) -> str:
    return str(server.url).rstrip("/")


@pytest.fixture
async def kube_client(apiserver: ApiServer) -> AsyncIterator[Callable[[], Any]]:
    """Makes ``kubernetes.client.ApiClient``s for the emulator; closes them afterwards."""
    import kubernetes

    made: list[Any] = []

    def make() -> Any:
        configuration = kubernetes.client.Configuration()
        configuration.host = server_url(apiserver)
        client = kubernetes.client.ApiClient(configuration)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
  - name: kmock
    cluster: {{server: "{server}"}}
users:
  - name: test
    user: {{token: test-token}}
contexts:
  - name: kmock
    context: {{cluster: kmock, user: test, namespace: {NAMESPACE}}}
current-context: kmock
"""
    )
    return path
