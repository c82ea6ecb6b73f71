"""The few Kubernetes API calls the operator makes itself: reading and labelling pods, and
reading the Tasks another Task waits for.

kopf does the rest (watching Tasks and the Lease, patching status, posting Events). The
official ``kubernetes`` client is synchronous: each call runs in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from mutirao.ha.kubernetes_lease import api_client
from mutirao_operator.reconcile import GROUP, PLURAL, VERSION


class KubeError(Exception):
    """A Kubernetes API call failed (``args[1]``: the HTTP status, if it answered)."""

    @property
    def status(self) -> int | None:
        return self.args[1] if len(self.args) > 1 else None


class Kube:
    def __init__(self, client: Any = None, timeout: float = 10.0) -> None:
        """``client``: a ``kubernetes.client.ApiClient`` (default: in-cluster, else
        kubeconfig), closed by :meth:`close`."""
        from kubernetes import client as k8s

        self._client = client if client is not None else api_client()
        self._core = k8s.CoreV1Api(self._client)
        self._custom = k8s.CustomObjectsApi(self._client)
        self.timeout = timeout

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        api = self._custom if method.endswith("_custom_object") else self._core
        fn = getattr(api, method)

        def call() -> bytes:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            data: bytes = response.data
            return data

        try:
            return orjson.loads(await asyncio.to_thread(call))
        except ApiException as exc:
            raise KubeError(f"{method}: HTTP {exc.status} {exc.reason}", exc.status) from None
        except (HTTPError, OSError) as exc:
            raise KubeError(f"{method}: {exc}") from None

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        reply = await self._call("list_namespaced_pod", namespace, label_selector=selector)
        items: list[dict[str, Any]] = reply.get("items") or []
        return items

    async def label_pod(self, namespace: str, name: str, label: str, value: str | None) -> None:
        """Set ``label`` on the pod, or remove it (``value`` None)."""
        body = {"metadata": {"labels": {label: value}}}
        await self._call(
            "patch_namespaced_pod",
            name,
            namespace,
            body,
            _content_type="application/merge-patch+json",
        )

    async def task(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Task ``name``, None if there is none."""
        try:
            task: dict[str, Any] = await self._call(
                "get_namespaced_custom_object", GROUP, VERSION, namespace, PLURAL, name
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return task

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
