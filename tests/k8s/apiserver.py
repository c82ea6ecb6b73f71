"""A test-only Kubernetes API server: KMock's emulator, strict about versions.

KMock (PyPI ``kmock``, by kopf's author) stands in for a real API server in these tests. Its
stock ``KubernetesEmulator`` keeps objects in memory and serves list/watch/get/create/patch/
delete, but assigns no ``uid``/``resourceVersion``, accepts stale writes, has no ``PUT`` and
merges ``/status`` into the object. This subclass adds what kopf (finalizers are JSON patches
that start with a ``test`` of ``/metadata/resourceVersion``) and leader election (optimistic
concurrency on ``resourceVersion``) rely on:

- create: ``uid``, ``creationTimestamp``, ``generation`` 1, a counter ``resourceVersion``,
  a name from ``generateName``;
- every write bumps ``resourceVersion``; a changed ``spec`` bumps ``generation``;
- a merge patch or a replace carrying a stale ``metadata.resourceVersion``: 409 Conflict;
- a JSON patch is applied in full; a failed ``test`` op: 422 Unprocessable Entity;
- ``PUT`` replaces the object (served as the fallback, so an injected reaction such as
  ``server["put", path][:1] << 409`` fails it without touching the object);
- with a ``status`` subresource, ``/status`` writes change only ``status`` and writes to the
  object itself leave ``status`` alone.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import secrets
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import rendering

_WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns ``old`` into ``new`` (None deletes a key)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    patch = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = merge_diff(old.get(key), value)
    return patch


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _writing: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _serving: set[int] = attrs.field(factory=set, init=False)
    history: int | None = None
    """How many past requests to keep for matching and assertions (None: all, as KMock)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback["put"] << self._serve_replace

    def _forget_old_requests(self) -> None:
        """Keep only the requests in flight and the last ``history`` ones, if set.

        KMock records every request and matches each new one against all of them, which
        slows it down as tests with long-running clients (lease renewals, kopf's timers) go
        on. Slices in injected reactions (``[:1]``) count among the kept requests only."""
        if self.history is None or len(self._requests) <= self.history + len(self._serving):
            return
        cut = len(self._requests) - self.history
        older = [r for r in self._requests[:cut] if id(r) in self._serving]
        self._requests[:] = older + self._requests[cut:]

    def _next_version(self) -> str:
        return str(next(self._versions))

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self._serving.add(id(request))
        self._forget_old_requests()
        try:
            if request.resource is None or str(request.method.value) not in _WRITES:
                return await super()._handle(request)
            # One write at a time, from the version check to the stored change.
            async with self._writing:
                try:
                    prepared = self._prepare(request)
                except kmock.KubernetesError as exc:
                    return await self._render_error(exc)
                if prepared is not request:
                    # Reactions find a request by identity among the recorded ones.
                    self._serving.add(id(prepared))
                    last = len(self._requests) - 1
                    index = next(i for i in range(last, -1, -1) if self._requests[i] is request)
                    self._requests[index] = prepared
                try:
                    return await super()._handle(prepared)
                finally:
                    self._serving.discard(id(prepared))
        finally:
            self._serving.discard(id(request))

    def _current(self, request: rendering.Request) -> kmock.Object | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        obj: kmock.Object = self._objects[key]
        return obj

    def _has_status(self, request: rendering.Request) -> bool:
        try:
            return "status" in self.resources[request.resource].subresources
        except KeyError:
            return False

    def _prepare(self, request: rendering.Request) -> rendering.Request:
        if request.action == kmock.action.CREATE:
            data = copy.deepcopy(request.data)
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                generation=1,
                resourceVersion=self._next_version(),
            )
            return attrs.evolve(request, data=data)
        current = self._current(request)
        if current is None:
            return request  # the stock emulator answers 404
        old = copy.deepcopy(current.raw)
        if request.action == kmock.action.DELETE:
            meta = old.get("metadata", {})
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                current.patch({"metadata": {"resourceVersion": self._next_version()}})
            return request
        if request.action != kmock.action.UPDATE:
            return request  # PUT: _serve_replace, as the fallback reaction
        if isinstance(request.data, list):
            try:
                new = jsonpatch.apply_patch(old, request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from None
        else:
            self._check_version(request.data, old)
            new = _merged(old, request.data)
        return attrs.evolve(request, data=self._stamp(request, old, new))

    @staticmethod
    def _check_version(data: Any, old: dict[str, Any]) -> None:
        wanted = (data or {}).get("metadata", {}).get("resourceVersion")
        current = old.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current:
            raise _error(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply "
                "your changes to the latest version and try again",
            )

    def _stamp(self, request: rendering.Request, old: dict[str, Any], new: dict[str, Any]) -> Any:
        """The merge patch that stores ``new``, with the server's rules on status and versions."""
        new = copy.deepcopy(new)
        if self._has_status(request):
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace"):
            if field in old.get("metadata", {}):
                meta[field] = old["metadata"][field]
        generation = old.get("metadata", {}).get("generation", 1)
        meta["generation"] = generation + (new.get("spec") != old.get("spec"))
        meta["resourceVersion"] = self._next_version()
        return merge_diff(old, new)

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        if request.name is None:
            raise _error(405, "MethodNotAllowed", "PUT needs an object name")
        async with self._lock:
            current = self._current(request)
            if current is None:
                raise kmock.KubernetesObjectNotFoundError()
            old = copy.deepcopy(current.raw)
            self._check_version(request.data, old)
            current.patch(self._stamp(request, old, request.data))
            raw = current.raw
            assert request.resource is not None
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return raw


def _merged(old: Any, patch: Any) -> Any:
    """``old`` with a JSON merge patch applied (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(result.get(key), value)
    return result
