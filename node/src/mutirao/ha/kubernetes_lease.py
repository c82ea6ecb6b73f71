"""The ``kubernetes`` lease backend: one ``coordination.k8s.io/v1`` Lease object.

The Lease ``<namespace>/<name>`` (``MUTIRAO_HA_NAMESPACE``, ``MUTIRAO_HA_LEASE_NAME``) is the
shared record:

- ``spec.holderIdentity``: the holder's node id (in the Helm chart, its pod name);
- ``spec.leaseTransitions``: the epoch, so ``kubectl get lease`` shows it;
- ``spec.renewTime``, ``spec.acquireTime``, ``spec.leaseDurationSeconds``: written by the
  holder (the duration rounded up to whole seconds, as the API requires);
- annotation ``mutirao.dev/url``: the holder's URL, which standbys and the operator follow;
- annotation ``mutirao.dev/synced``: comma-separated ids of the nodes that hold every
  acknowledged record (see :func:`mutirao.ha.lease.may_take`).

Every write is a create, or a replace carrying the ``resourceVersion`` just read: the API
server answers 409 Conflict when anyone wrote in between, so of two candidates racing for
the Lease exactly one wins, and a holder whose renewal conflicts gives the lease up.

Expiry is measured on this node's clock from the moment it *saw* the record last change,
as client-go's leader election does, rather than by comparing ``renewTime`` (another node's
clock) with its own: clock skew between nodes then cannot hand the lease over early. The
holder steps down ``step_down_margin`` before its own renewal time plus the duration, which
is earlier than anyone can have seen that renewal expire.

The official ``kubernetes`` client is synchronous: each call runs in a thread with a
timeout shorter than the step-down margin, so a hung API server cannot keep the holder
acting past its lease. The client is imported only when this backend is chosen.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from mutirao.ha.lease import Lease, may_take, next_lease, renewed

log = logging.getLogger(__name__)

URL_ANNOTATION = "mutirao.dev/url"
SYNCED_ANNOTATION = "mutirao.dev/synced"
_MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseUnavailable(ConnectionError):
    """The API server could not be reached or failed (not a conflict): retry later."""


class _Conflict(Exception):
    """409: someone else wrote the Lease first."""


def micro_time(ts: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(_MICROTIME)


def lease_from_object(obj: dict[str, Any], observed_at: float) -> Lease:
    """Our view of a Lease object; ``observed_at`` is when this node saw it change."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    annotations = meta.get("annotations") or {}
    synced = tuple(n for n in annotations.get(SYNCED_ANNOTATION, "").split(",") if n)
    return Lease(
        holder=spec.get("holderIdentity") or "",
        url=annotations.get(URL_ANNOTATION, ""),
        epoch=int(spec.get("leaseTransitions") or 0),
        renewed_at=observed_at,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        synced=synced,
    )


def lease_object(
    lease: Lease, namespace: str, name: str, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The Lease object recording ``lease``, replacing ``previous`` (None: create it)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    annotations: dict[str, str] = {}
    acquired = lease.renewed_at
    if previous is not None:
        old_meta = previous.get("metadata") or {}
        meta = {**old_meta, "name": name, "namespace": namespace}
        annotations = dict(old_meta.get("annotations") or {})
        old_spec = previous.get("spec") or {}
        if old_spec.get("holderIdentity") == lease.holder and old_spec.get("acquireTime"):
            acquired = _parse_time(old_spec["acquireTime"], default=acquired)
    annotations.pop(URL_ANNOTATION, None)
    if lease.url:
        annotations[URL_ANNOTATION] = lease.url
    annotations[SYNCED_ANNOTATION] = ",".join(lease.synced)
    meta["annotations"] = annotations
    spec: dict[str, Any] = {
        "holderIdentity": lease.holder,
        "leaseDurationSeconds": max(1, math.ceil(lease.duration)),
        "leaseTransitions": lease.epoch,
        "renewTime": micro_time(lease.renewed_at),
    }
    if lease.holder:
        spec["acquireTime"] = micro_time(acquired)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def _parse_time(text: str, default: float) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def api_client() -> Any:
    """A ``kubernetes`` ApiClient: in-cluster (service account) config, else kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class KubernetesLease:
    shared_record = True
    """The Lease is seen by every candidate: once it says a standby is out of sync, that
    standby cannot take over, so the active may go on without it at once."""

    def __init__(
        self,
        namespace: str,
        name: str,
        node: str,
        duration: float,
        *,
        client: Any = None,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``client`` is a ``kubernetes.client.ApiClient`` (default: :func:`api_client`),
        closed by :meth:`close`; ``timeout`` bounds every API call, in seconds."""
        from kubernetes import client as k8s

        self.namespace = namespace
        self.name = name
        self.node = node
        self.duration = duration
        self.timeout = timeout
        self._clock = clock
        self._client = client if client is not None else api_client()
        self._api = k8s.CoordinationV1Api(self._client)
        self._model = k8s.V1Lease
        self._seen: tuple[str, float] | None = None
        self._last: Lease | None = None

    # -- API calls: each in a thread, bounded by the timeout ---------------------------------

    async def _call(self, method: str, *args: Any) -> dict[str, Any] | None:
        """One API call; the object it returns, or None for 404. Raises _Conflict on 409
        and LeaseUnavailable when the server cannot be reached or fails."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        fn = getattr(self._api, method)

        def call() -> bytes:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout)
            data: bytes = response.data
            return data

        try:
            raw = await asyncio.wait_for(asyncio.to_thread(call), self.timeout + 0.5)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise _Conflict(str(exc.reason)) from None
            raise LeaseUnavailable(f"{method}: HTTP {exc.status} {exc.reason}") from None
        except (HTTPError, TimeoutError, OSError) as exc:
            raise LeaseUnavailable(f"{method}: {exc or type(exc).__name__}") from None
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    async def _get(self) -> dict[str, Any] | None:
        return await self._call("read_namespaced_lease", self.name, self.namespace)

    async def _write(self, lease: Lease, previous: dict[str, Any] | None) -> dict[str, Any]:
        body = self._model.from_dict(lease_object(lease, self.namespace, self.name, previous))
        if previous is None:
            written = await self._call("create_namespaced_lease", self.namespace, body)
        else:
            written = await self._call("replace_namespaced_lease", self.name, self.namespace, body)
        if written is None:
            raise _Conflict("the Lease was deleted meanwhile")
        return written

    def _observe(self, obj: dict[str, Any], now: float) -> Lease:
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
        self._last = lease_from_object(obj, self._seen[1])
        return self._last

    # -- LeaseBackend ------------------------------------------------------------------------

    async def read(self) -> Lease | None:
        try:
            obj = await self._get()
        except LeaseUnavailable as exc:
            log.warning("cannot read Lease %s/%s: %s", self.namespace, self.name, exc)
            return self._last
        return None if obj is None else self._observe(obj, self._clock())

    async def acquire(self, node: str, url: str, now: float, epoch_floor: int) -> Lease | None:
        assert node == self.node
        try:
            obj = await self._get()
            current = None if obj is None else self._observe(obj, now)
            # An empty holderIdentity is a released lease: free at once.
            alive = None if current is None or current.holder else False
            if not may_take(current, node, now, alive):
                return None
            lease = next_lease(
                current, node, url, now, duration=self.duration, epoch_floor=epoch_floor
            )
            written = await self._write(lease, obj)
        except _Conflict:
            return None
        except LeaseUnavailable as exc:
            log.warning("cannot take Lease %s/%s: %s", self.namespace, self.name, exc)
            return None
        self._observe(written, now)
        return lease

    async def renew(self, lease: Lease, now: float, synced: Sequence[str]) -> Lease | None:
        """Raises LeaseUnavailable (a ConnectionError) when the API server cannot answer."""
        obj = await self._get()
        if obj is None:
            return None
        current = self._observe(obj, now)
        if current.holder != self.node or current.epoch != lease.epoch:
            return None
        fresh = renewed(lease, now, synced)
        try:
            written = await self._write(fresh, obj)
        except _Conflict:
            log.warning("renewing Lease %s/%s conflicted: giving it up", self.namespace, self.name)
            return None
        self._observe(written, now)
        return fresh

    async def release(self, lease: Lease) -> None:
        try:
            obj = await self._get()
            if obj is None:
                return
            current = lease_from_object(obj, 0.0)
            if (current.holder, current.epoch) != (self.node, lease.epoch):
                return
            free = Lease("", "", lease.epoch, self._clock(), lease.duration, current.synced)
            await self._write(free, obj)
        except (_Conflict, LeaseUnavailable) as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)

    def observe(self, lease: Lease) -> None:
        """The Lease object is the truth here; nothing to learn from the stream."""

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)
