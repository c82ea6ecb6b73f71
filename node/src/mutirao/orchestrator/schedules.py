"""Durable schedules, pure logic: when each one fires, and what a fire after downtime does.

A schedule is a journal record like a task (``schedule``, ``unschedule``, ``tick``; see
:mod:`mutirao.orchestrator.tasks`), so every orchestrator holds the same schedules and the
last tick each one fired. Only the leader fires: each fire is a task submission whose
idempotency key is ``NAME@<tick in ISO 8601 UTC>``, so a tick fired by a leader that died
before recording it is found again, not fired twice, by the next one.

Ticks: ``every: S`` ticks at the multiples of S seconds since the epoch (so they do not move
with restarts); ``cron`` ticks as cron does in ``timezone`` (croniter, which handles DST and
month ends). A tick is *due* when at most :data:`GRACE` seconds late; older ones were
*missed* (the cluster was down) and ``catch_up`` decides: ``none`` skips them, ``last`` fires
the latest, ``all`` fires each (at most :data:`MAX_CATCH_UP`).
"""

from __future__ import annotations

import datetime
import math
import zoneinfo
from typing import Annotated, Any, Literal

import msgspec
from croniter import croniter

from mutirao.errors import ValidationError

GRACE = 2.0
"""Seconds a tick may be late and still count as due rather than missed."""
MAX_CATCH_UP = 1000
"""Most missed ticks ``catch_up: all`` fires at once."""
MIN_EVERY = 0.5

Overlap = Literal["allow", "skip", "replace"]
CatchUp = Literal["none", "last", "all"]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")]


class ScheduleSpec(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/schedules``: what to submit, and when."""

    name: _Name
    task: msgspec.Raw
    # Absent, not null: exactly one of the two is given.
    cron: str | msgspec.UnsetType = msgspec.UNSET
    every: Annotated[float, msgspec.Meta(ge=MIN_EVERY, le=366 * 86400)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    timezone: str = "UTC"
    overlap: Overlap = "allow"
    catch_up: CatchUp = "none"


class Schedule(msgspec.Struct, omit_defaults=True):
    """A schedule as the journal holds it; ``task`` is the full task spec (defaults filled
    in when the schedule was made)."""

    name: str
    owner: str
    task: dict[str, Any]
    created_at: float
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    overlap: str = "allow"
    catch_up: str = "none"
    paused: bool = False
    last_tick: float | None = None
    """The newest tick fired, skipped or missed (ticks after it are still to come)."""
    last_task: str | None = None
    """The task of the newest fire (``overlap`` looks at it)."""
    fires: int = 0
    misses: int = 0

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (unix seconds)."""
        if self.every is not None:
            k = math.floor(after / self.every) + 1
            while k * self.every <= after:  # floating point: k * every may round down
                k += 1
            return k * self.every
        zone = zoneinfo.ZoneInfo(self.timezone)
        start = datetime.datetime.fromtimestamp(after, zone)
        return float(croniter(self.cron, start).get_next(float))

    def due_from(self) -> float:
        """The time ticks are counted from: the last one, or the schedule's creation."""
        return self.created_at if self.last_tick is None else self.last_tick

    def view(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "task": self.task,
            "overlap": self.overlap,
            "catch_up": self.catch_up,
            "paused": self.paused,
            "last_tick": self.last_tick,
            "last_task": self.last_task,
            "next_tick": None if self.paused else self.next_tick(max(now, self.due_from())),
            "fires": self.fires,
            "misses": self.misses,
        }


def checked(spec: ScheduleSpec) -> None:
    """Refuse what the types cannot: cron and every (exactly one), the timezone."""
    if (spec.cron is msgspec.UNSET) == (spec.every is msgspec.UNSET):
        raise ValidationError("give either cron or every (not both)", field="cron")
    if isinstance(spec.cron, str) and not croniter.is_valid(spec.cron):
        raise ValidationError(f"cron: {spec.cron!r} is not a cron expression", field="cron")
    try:
        zoneinfo.ZoneInfo(spec.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"timezone: unknown time zone {spec.timezone!r} (e.g. Europe/Lisbon)",
            field="timezone",
        ) from None


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of the fire of ``tick``: ``NAME@2026-12-04T14:00:00Z``."""
    moment = datetime.datetime.fromtimestamp(tick, datetime.UTC)
    text = moment.isoformat(timespec="milliseconds" if tick % 1 else "seconds")
    return f"{name}@{text.removesuffix('+00:00')}Z"


def fires(schedule: Schedule, now: float) -> tuple[list[float], float | None, int]:
    """The ticks to fire at ``now``, the newest tick passed (recorded as the last one), and
    how many were missed without a fire."""
    ticks: list[float] = []
    tick = schedule.next_tick(schedule.due_from())
    while tick <= now and len(ticks) <= MAX_CATCH_UP:
        ticks.append(tick)
        tick = schedule.next_tick(tick)
    if not ticks:
        return [], None, 0
    newest = ticks[-1]
    if tick <= now:  # more than MAX_CATCH_UP behind: jump to the newest tick
        newest = _newest_before(schedule, now, newest)
        ticks.append(newest)
    due = [t for t in ticks if now - t <= GRACE]
    if schedule.catch_up == "all":
        chosen = ticks[-MAX_CATCH_UP:]
    elif schedule.catch_up == "last":
        chosen = [newest]
    else:
        chosen = due
    return chosen, newest, len(ticks) - len(chosen)


def _newest_before(schedule: Schedule, now: float, tick: float) -> float:
    if schedule.every is not None:
        return math.floor(now / schedule.every) * schedule.every
    while (following := schedule.next_tick(tick)) <= now:
        tick = following
    return tick
