"""The operator's side of the orchestrator API: it follows the leader and mints its tokens.

It wraps :class:`mutirao.client.http.Client`, which already moves to another known URL when
one cannot be reached and to the leader a standby names (HTTP 421). On top, the operator
switches on its own when the Lease names a new leader (:meth:`Orchestrators.follow`), and
counts those switches (``generation``) so that every unfinished Task is resubmitted once,
with its idempotency key, to the new leader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from mutirao.auth import SUBMITTER, TokenSigner, User
from mutirao.client.http import ApiError, Client
from mutirao.protocol import HA_PATH, TaskView
from mutirao_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


class Orchestrators:
    def __init__(self, settings: OperatorSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.client = Client(
            settings.urls,
            settings.token,
            retry_for=settings.retry_for,
            timeout=settings.poll_wait + settings.retry_for,
            ca=settings.ca,
        )
        self.epoch = 0
        """The leader's epoch, as the Lease (or the orchestrator) last said."""
        self.generation = 0
        """How many times the operator switched to a new leader."""
        self._signer = None if settings.token else TokenSigner(settings.token_secret)
        self._token_renew_at = 0.0

    async def __aenter__(self) -> Orchestrators:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.__aexit__(et, e, tb)

    @property
    def url(self) -> str:
        return self.client.url

    def follow(self, url: str, epoch: int) -> None:
        """The Lease names a new leader at ``url``: talk to it from now on."""
        self.client.follow(url)
        self.epoch = max(self.epoch, epoch)
        self.generation += 1

    def _authorize(self) -> None:
        if self._signer is None:
            return
        now = self.clock()
        if now >= self._token_renew_at:
            ttl = self.settings.token_ttl
            user = User(self.settings.user, SUBMITTER)
            self.client.token = self._signer.mint(user, now, ttl)
            self._token_renew_at = now + ttl / 2

    async def _request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        self._authorize()
        return await self.client.request(method, path, body, **params)

    async def submit(self, body: dict[str, Any]) -> TaskView:
        """Submit (idempotently, by ``body["key"]``); the task's view."""
        view: TaskView = await self._request("POST", "/v1/tasks", body)
        return view

    async def result(self, task_id: str, wait: float) -> TaskView | None:
        """The task's view, waiting up to ``wait`` seconds for it to finish; None if this
        orchestrator does not know the task."""
        try:
            view: TaskView = await self._request("GET", f"/v1/tasks/{task_id}/result", wait=wait)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return view

    async def cancel(self, task_id: str) -> TaskView | None:
        """Cancel the task; None if unknown or already finished."""
        try:
            view: TaskView = await self._request("POST", f"/v1/tasks/{task_id}/cancel", {})
        except ApiError as exc:
            if exc.status in (400, 404, 409):
                log.info("task %s not cancelled: %s", task_id, exc)
                return None
            raise
        return view

    async def schedule(self, name: str) -> dict[str, Any] | None:
        """The orchestrator schedule ``name``, None if there is none."""
        try:
            view: dict[str, Any] = await self._request("GET", f"/v1/schedules/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return view

    async def add_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        view: dict[str, Any] = await self._request("POST", "/v1/schedules", body)
        return view

    async def remove_schedule(self, name: str) -> None:
        try:
            await self._request("DELETE", f"/v1/schedules/{name}")
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def pause_schedule(self, name: str, paused: bool) -> dict[str, Any]:
        action = "pause" if paused else "resume"
        view: dict[str, Any] = await self._request("POST", f"/v1/schedules/{name}/{action}", {})
        return view

    async def refresh_epoch(self) -> None:
        """Ask the orchestrator in use for its epoch (when no Lease said it yet)."""
        view = await self._request("GET", HA_PATH)
        if isinstance(view, dict) and view.get("role") == "active":
            self.epoch = max(self.epoch, int(view.get("epoch", 0)))
