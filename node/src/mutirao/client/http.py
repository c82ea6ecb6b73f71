"""An async client for the orchestrator API, shared by the CLI, the demo and the tests.

It knows every orchestrator URL and moves to the next one when the current one cannot be
reached or answers that it is not ready, so callers follow the active orchestrator.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from mutirao.client.canvas import Canvas, Workflow, build
from mutirao.client.errors import ApiError, Unreachable
from mutirao.client.session import Session
from mutirao.protocol import TaskBrief, TaskView, UserView, WorkerView
from mutirao.settings import TlsSettings
from mutirao.tls import client_context

__all__ = ["ApiError", "Client", "Unreachable"]
"""The errors are defined in :mod:`mutirao.client.errors` and offered here too."""


class Client:
    def __init__(
        self,
        urls: Sequence[str],
        token: str = "",
        *,
        refresh_token: str = "",
        on_refresh: Callable[[str], None] | None = None,
        retry_for: float = 10.0,
        timeout: float = 90.0,
        ca: str = "",
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """``refresh_token`` (from a login) renews ``token`` when it expires; ``on_refresh``
        is then called with the new one (the CLI saves it). ``ca``: the PEM file of the
        authority ``https`` orchestrators are checked against (default: the system's)."""
        if not urls:
            raise ValueError("at least one orchestrator URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.token = token
        self.refresh_token = refresh_token
        self.on_refresh = on_refresh
        self.retry_for = retry_for
        self._current = 0
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self.ca = ca
        self.on_retry = on_retry
        """Told, at most once a second, what the client is retrying once it has failed for
        a second (the CLI prints it: a user waiting sees why)."""
        self._failing_since: float | None = None
        self._told = 0.0
        context = client_context(TlsSettings(ca=ca))
        self._ssl: ssl.SSLContext | bool = context if context is not None else True

    async def __aenter__(self) -> Client:
        self._http = aiohttp.ClientSession(
            timeout=self._timeout, connector=aiohttp.TCPConnector(limit=256, ssl=self._ssl)
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def url(self) -> str:
        return self.urls[self._current]

    def follow(self, leader: str) -> None:
        """Send the next requests to ``leader`` first (added to the known URLs if new)."""
        leader = leader.rstrip("/")
        if leader not in self.urls:
            self.urls.append(leader)
        self._current = self.urls.index(leader)

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One API call; on an unreachable or unready orchestrator, tries the others."""
        assert self._http is not None, "use `async with Client(...)`"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else orjson.dumps(body)
        query = {k: str(v) for k, v in params.items() if v is not None}
        deadline = time.monotonic() + self.retry_for
        self._failing_since = None
        pause = 0.05
        renewed = False
        while True:
            try:
                async with self._http.request(
                    method, self.url + path, data=data, headers=headers, params=query
                ) as resp:
                    payload = orjson.loads(await resp.read() or b"null")
                    if resp.status < 400:
                        return payload
                    body = payload if isinstance(payload, dict) else {}
                    if resp.status == 401 and body.get("expired") and not renewed:
                        renewed = await self._renew()
                        if renewed:
                            headers["Authorization"] = f"Bearer {self.token}"
                            continue
                    leader = body.get("leader")
                    if resp.status == 421 and leader and leader.rstrip("/") != self.url:
                        # A standby names the leader: go there at once.
                        self.follow(str(leader))
                        if time.monotonic() < deadline:
                            await asyncio.sleep(0.005)
                            continue
                    if resp.status not in (421, 503):
                        raise ApiError(resp.status, body)
                    problem = f"{self.url}: {body.get('message', 'not ready')}"
            except aiohttp.ClientConnectorCertificateError as exc:
                raise self._untrusted(exc) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                problem = f"{self.url}: {_why(exc)}"
            pause = await self._next_url(deadline, problem, pause)

    async def connect(self, path: str) -> aiohttp.ClientWebSocketResponse:
        """A websocket to ``path`` on the first orchestrator that accepts it (a standby
        refuses: the next one is tried), authenticated with the token."""
        assert self._http is not None, "use `async with Client(...)`"
        deadline = time.monotonic() + self.retry_for
        self._failing_since = None
        pause = 0.05
        renewed = False
        while True:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                return await self._http.ws_connect(self.url + path, headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401 and not renewed:
                    renewed = await self._renew()
                    if renewed:
                        continue
                if exc.status not in (421, 503):
                    raise ApiError(exc.status, {"message": exc.message}) from None
                problem = f"{self.url}: HTTP {exc.status}"
            except aiohttp.ClientConnectorCertificateError as exc:
                raise self._untrusted(exc) from None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                problem = f"{self.url}: {_why(exc)}"
            pause = await self._next_url(deadline, problem, pause)

    def _untrusted(self, exc: aiohttp.ClientConnectorCertificateError) -> Unreachable:
        """A certificate the client does not trust will not be trusted on a retry either."""
        return Unreachable(
            f"{self.url}: its certificate is not trusted ({exc.certificate_error}); give the "
            "cluster's CA in MUTIRAO_TLS_CA (`mutirao up --tls` writes DATA_DIR/tls/ca.pem)"
        )

    async def _next_url(self, deadline: float, problem: str, pause: float) -> float:
        """After a failed try: give up past ``deadline``, else move on to the next URL after
        ``pause``; returns the pause before the try after (backing off to 1 s)."""
        now = time.monotonic()
        if now >= deadline:
            raise Unreachable(
                f"no orchestrator answered within {self.retry_for:g} s ({problem}). Is the "
                "cluster running (`mutirao up`)? Does MUTIRAO_URL (or --url) name it?"
            )
        if self._failing_since is None:
            self._failing_since = now
        if self.on_retry is not None and now - self._failing_since >= 1 and now - self._told >= 1:
            self._told = now
            self.on_retry(f"retrying {problem}…")
        self._current = (self._current + 1) % len(self.urls)
        await asyncio.sleep(pause)
        return min(pause * 2, 1.0)

    def session(self) -> Session:
        """Submissions over one websocket (``async with client.session() as s``): much
        cheaper than a request each for many small ones; see :mod:`mutirao.client.session`."""
        return Session(self)

    async def _renew(self) -> bool:
        """A new access token from the refresh token, if there is one and it still works."""
        if not self.refresh_token:
            return False
        try:
            reply = await self.request("POST", "/v1/refresh", {"refresh_token": self.refresh_token})
        except ApiError as exc:
            if exc.status != 401:
                raise
            return False  # the session ended: the caller sees the original 401
        self.token = reply["token"]
        if self.on_refresh is not None:
            self.on_refresh(self.token)
        return True

    async def login(self, username: str, password: str) -> str:
        """A new session: the access token (returned) and the refresh token that renews
        it (kept in ``refresh_token``)."""
        credentials = {"username": username, "password": password}
        reply = await self.request("POST", "/v1/login", credentials)
        self.token, self.refresh_token = reply["token"], reply["refresh_token"]
        return self.token

    async def submit(
        self, task_type: str, payload: Any = None, *, wait: float = 0.0, **options: Any
    ) -> TaskView:
        """Submit one task; an idempotency key is added if none is given, so the retry after
        a lost reply returns the task already created instead of a duplicate. With ``wait``
        the answer comes once the task finished (or ``wait`` seconds passed)."""
        spec = {"type": task_type, "payload": payload}
        spec.update({k: v for k, v in options.items() if v is not None})
        spec.setdefault("key", uuid.uuid4().hex)
        result: TaskView = await self.request(
            "POST", "/v1/tasks", spec, wait=min(wait, 30.0) if wait else None
        )
        return result

    async def submit_batch(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit many tasks in one request (keys added as in :meth:`submit`: one random
        prefix per batch and the position, so a batch costs one uuid, not one per task)."""
        prefix = uuid.uuid4().hex[:16]  # 64 random bits per batch; shorter keys, less memory
        specs = [
            spec if "key" in spec else {**spec, "key": f"{prefix}-{i}"}
            for i, spec in enumerate(specs)
        ]
        reply = await self.request("POST", "/v1/tasks", {"tasks": specs})
        tasks: list[dict[str, Any]] = reply["tasks"]
        return tasks

    async def submit_workflow(self, canvas: Canvas) -> Workflow:
        """Submit a chain, group or chord (see :mod:`mutirao.client.canvas`) as one batch:
        recorded whole or not at all; the answer names each step's task."""
        specs, steps = build(canvas)
        tasks = await self.submit_batch(specs)
        return Workflow(steps, [t["id"] for t in tasks])

    async def get(self, task_id: str) -> TaskView:
        result: TaskView = await self.request("GET", f"/v1/tasks/{task_id}")
        return result

    async def result(self, task_id: str, wait: float = 0.0) -> TaskView:
        result: TaskView = await self.request("GET", f"/v1/tasks/{task_id}/result", wait=wait)
        return result

    async def wait(self, task_id: str, timeout: float = 60.0) -> TaskView:
        """Long-poll until the task finishes or ``timeout`` passes; returns its last view."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            view = await self.result(task_id, wait=max(0.0, min(remaining, 30.0)))
            if view["state"] in ("succeeded", "failed", "cancelled") or remaining <= 0:
                return view

    async def wait_many(self, ids: list[str], timeout: float = 60.0) -> list[TaskView]:
        """Wait until all ``ids`` finish (or ``timeout`` passes); their views, in order."""
        views: list[TaskView] = await self._wait_many(ids, timeout, "full")
        return views

    async def results(self, ids: list[str], timeout: float = 60.0) -> list[TaskBrief]:
        """Like :meth:`wait_many`, but only id, state, result and error of each task: the
        cheap way to collect the results of a large batch."""
        briefs: list[TaskBrief] = await self._wait_many(ids, timeout, "brief")
        return briefs

    async def _wait_many(self, ids: list[str], timeout: float, view: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(remaining, 30.0))
            reply = await self.request(
                "POST", "/v1/tasks/wait", {"ids": ids, "wait": wait, "view": view}
            )
            views = reply["tasks"]
            done = all(v["state"] in ("succeeded", "failed", "cancelled") for v in views)
            if done or remaining <= 0:
                return views

    async def tasks(self, state: str | None = None, limit: int = 100) -> list[TaskView]:
        tasks: list[TaskView] = (await self.task_page(state, limit))["tasks"]
        return tasks

    async def task_page(
        self, state: str | None = None, limit: int = 100, after: int | None = None
    ) -> dict[str, Any]:
        """Up to ``limit`` tasks, newest first, after position ``after`` (the ``next`` of
        the page before); with ``total`` (how many match) and ``next``."""
        page: dict[str, Any] = await self.request(
            "GET", "/v1/tasks", state=state, limit=limit, after=after
        )
        return page

    async def cancel(self, task_id: str) -> TaskView:
        result: TaskView = await self.request("POST", f"/v1/tasks/{task_id}/cancel", {})
        return result

    async def workers(self) -> list[WorkerView]:
        reply = await self.request("GET", "/v1/workers")
        workers: list[WorkerView] = reply["workers"]
        return workers

    async def cluster(self) -> dict[str, Any]:
        reply: dict[str, Any] = await self.request("GET", "/v1/cluster")
        return reply

    # -- users -----------------------------------------------------------------------------

    async def logout(self) -> None:
        """Revoke this client's session (its access and refresh tokens)."""
        await self.request("POST", "/v1/logout", {})

    async def users(self) -> list[UserView]:
        reply = await self.request("GET", "/v1/users")
        users: list[UserView] = reply["users"]
        return users

    async def add_user(self, name: str, password: str, role: str = "submitter") -> UserView:
        body = {"name": name, "password": password, "role": role}
        user: UserView = await self.request("POST", "/v1/users", body)
        return user

    async def change_user(self, name: str, **changes: str) -> UserView:
        """``password=`` (signs the user out everywhere) and/or ``role=``."""
        user: UserView = await self.request("PATCH", f"/v1/users/{name}", changes)
        return user

    async def remove_user(self, name: str) -> None:
        await self.request("DELETE", f"/v1/users/{name}")

    async def revoke_user(self, name: str) -> None:
        """Revoke every login token of ``name`` issued until now."""
        await self.request("POST", f"/v1/users/{name}/revoke", {})


def _why(exc: BaseException) -> str:
    """What failed, in words (not aiohttp's "Cannot connect to host ... ssl:default [...]")."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        return os.strerror(error.errno) if error.errno else str(error)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
