"""What the engine tells an observer (metrics) about its live decisions, sans-IO.

The engine calls these hooks only for changes it decides itself (its ``_record``), never for
records it replays at recovery or receives as a standby, so an observer counts each event
once, on the orchestrator that made it happen. Hooks are called once per journal record,
with every task the record changed, so a batch of 1,000 submissions is one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from mutirao.orchestrator.tasks import Change

DeathCause = Literal["disconnected", "heartbeat_timeout"]
"""Why a worker was declared dead: its connection dropped, or it fell silent."""

RedistributionCause = Literal["worker_dead", "worker_restarted", "worker_drained"]
"""Why attempts were taken back from a worker: it died, or came back without them."""


class EngineObserver(Protocol):
    def on_changes(self, kind: str, changes: Sequence[Change]) -> None:
        """A record of ``kind`` (``submit``, ``assign``, ``finish``, ``cancel``) changed the
        state of these tasks; each :class:`Change` carries the state before. ``settle``:
        waiting tasks that record released or cancelled (their dependencies settled)."""

    def on_heartbeat(self, worker: str) -> None:
        """A heartbeat from a current connection of ``worker`` arrived."""

    def on_worker_dead(self, worker: str, cause: DeathCause) -> None:
        """``worker`` was declared dead."""

    def on_redistributed(self, attempts: int, cause: RedistributionCause) -> None:
        """``attempts`` attempts were taken back from a worker (requeued or, out of
        attempts, failed)."""

    def on_takeover(self, epoch: int) -> None:
        """This engine's node now leads with ``epoch``."""

    def on_schedule(self, name: str, fired: int, missed: int, lag: float) -> None:
        """Schedule ``name`` fired ``fired`` ticks and missed ``missed``, its newest tick
        ``lag`` seconds after it came."""


class NullObserver:
    """Observes nothing: the default, and what tests of the engine alone use."""

    def on_changes(self, kind: str, changes: Sequence[Change]) -> None:
        pass

    def on_heartbeat(self, worker: str) -> None:
        pass

    def on_worker_dead(self, worker: str, cause: DeathCause) -> None:
        pass

    def on_redistributed(self, attempts: int, cause: RedistributionCause) -> None:
        pass

    def on_takeover(self, epoch: int) -> None:
        pass

    def on_schedule(self, name: str, fired: int, missed: int, lag: float) -> None:
        pass


NULL_OBSERVER: EngineObserver = NullObserver()
