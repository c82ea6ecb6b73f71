"""Rate limits and concurrency caps per task type, quotas and fair-share weights per user.

Limits and quotas are cluster state: set over the API (``/v1/limits``, ``/v1/quotas``), they
are journal records (``limit``/``unlimit``, ``quota``/``unquota``) replicated and
checkpointed like tasks. What they count is not: the leader counts what runs and what each
user has queued from its own tables, and keeps the rate limits' recent starts in memory. A
rate limit is exact across the cluster because one leader dispatches every task.

A rate limit ``{"rate": r, "burst": b}`` lets tasks of its type start at ``r`` per second on
average and never more than ``b`` in any one second. Its allowance starts at one task when
the limit is first used and grows by ``r`` per second while unused, up to ``b``. Every
replica keeps it from the ``assign`` records it applies (their times are the leader's), so a
standby that takes over goes on from the old leader's last starts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Annotated, cast

import msgspec

from mutirao.errors import ValidationError
from mutirao.protocol import TaskState

_Count = Annotated[int, msgspec.Meta(ge=1, le=10**9)]
_Rate = Annotated[float, msgspec.Meta(gt=0, le=1e6)]
_Weight = Annotated[float, msgspec.Meta(gt=0, le=1e6)]

ANY_USER = "*"
"""The quota of every user who has none of their own."""
QUEUED = frozenset({TaskState.PENDING, TaskState.SCHEDULED, TaskState.WAITING})
ACTIVE = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


class LimitSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /v1/limits/{type}`` (a field left out is not limited)."""

    rate: _Rate | msgspec.UnsetType = msgspec.UNSET
    """Starts per second, on average."""
    burst: _Count | msgspec.UnsetType = msgspec.UNSET
    """Most starts in any one second (default: the rate, rounded up)."""
    concurrency: _Count | msgspec.UnsetType = msgspec.UNSET
    """Most tasks of the type assigned or running at once."""


class Limit(msgspec.Struct, omit_defaults=True):
    type: str
    rate: float | None = None
    burst: int | None = None
    concurrency: int | None = None

    def view(self) -> dict[str, object]:
        return {
            "type": self.type,
            "rate": self.rate,
            "burst": self.burst,
            "concurrency": self.concurrency,
        }


def limit(task_type: str, spec: LimitSpec) -> Limit:
    """A checked limit (errors name the field). A burst below the rate is allowed: it is
    then the rate (no more than ``burst`` start in any second)."""
    rate = None if spec.rate is msgspec.UNSET else spec.rate
    burst = None if spec.burst is msgspec.UNSET else spec.burst
    concurrency = None if spec.concurrency is msgspec.UNSET else spec.concurrency
    if burst is not None and rate is None:
        raise ValidationError("a burst needs a rate", field="burst")
    if rate is None and concurrency is None:
        raise ValidationError("give a rate, a concurrency or both", field="rate")
    if rate is not None and burst is None:
        burst = max(1, math.ceil(rate))
    return Limit(task_type, rate, burst, concurrency)


class QuotaSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``PUT /v1/quotas/{user}`` (a quota left out does not apply)."""

    weight: _Weight = 1.0
    """Share of the dispatches when users compete (2: twice a user of weight 1)."""
    max_running: _Count | msgspec.UnsetType = msgspec.UNSET
    """Most of the user's tasks assigned or running at once (more wait, pending)."""
    max_pending: _Count | msgspec.UnsetType = msgspec.UNSET
    """Most of the user's tasks waiting to run (pending, scheduled or waiting): a
    submission past it is refused with 429."""

    def quota(self, user: str) -> Quota:
        return Quota(
            user,
            self.weight,
            None if self.max_running is msgspec.UNSET else self.max_running,
            None if self.max_pending is msgspec.UNSET else self.max_pending,
        )


class Quota(msgspec.Struct, omit_defaults=True):
    user: str
    weight: float = 1.0
    max_running: int | None = None
    max_pending: int | None = None

    def view(self) -> dict[str, object]:
        return {
            "user": self.user,
            "weight": self.weight,
            "max_running": self.max_running,
            "max_pending": self.max_pending,
        }


class Rate:
    """One type's rate limit at work: an allowance that grows ``rate`` per second up to
    ``burst``, and the last ``burst`` starts (at most ``burst`` in any second)."""

    __slots__ = ("burst", "rate", "recent", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = 1.0, now
        self.recent: deque[float] = deque(maxlen=burst)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def ready(self, now: float) -> bool:
        self._refill(now)
        recent = self.recent
        return self.tokens >= 1.0 - 1e-9 and (len(recent) < self.burst or now - recent[0] >= 1.0)

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0
        self.recent.append(now)

    def untake(self) -> None:
        """Undo the last :meth:`take` (a choice handed to its record, which takes again)."""
        self.tokens += 1.0
        self.recent.pop()

    def when(self, now: float) -> float:
        """When the next start may be."""
        self._refill(now)
        at = now + max(0.0, 1.0 - self.tokens) / self.rate
        if len(self.recent) >= self.burst:
            at = max(at, self.recent[0] + 1.0)
        return at


class Gates:
    """What the leader checks before it dispatches a task beyond a free worker: its type's
    rate and concurrency, its owner's ``max_running``; and what it counts for them."""

    def __init__(self) -> None:
        self.limits: dict[str, Limit] = {}
        self.quotas: dict[str, Quota] = {}
        self.rates: dict[str, Rate] = {}
        self.active_by_type: dict[str, int] = {}
        self.active_by_owner: dict[str, int] = {}
        self.queued_by_owner: dict[str, int] = {}
        self.counting = False
        """Whether some limit or quota needs the counts (kept only then)."""
        self.wake: float | None = None
        """When a rate limit that held tasks back lets the next start (for the timer)."""
        self._lent: list[tuple[str, str]] = []
        """Choices of the dispatch under way (see :meth:`took`)."""
        self.rated = False
        """Whether some limit has a rate (``assign`` records are then timed here)."""
        self._holds = False
        """Whether any limit or ``max_running`` may hold a task back (else weights only)."""

    def configure(self, limits: dict[str, Limit], quotas: dict[str, Quota]) -> bool:
        """Limits or quotas changed; returns whether counts must be rebuilt."""
        self.limits, self.quotas = limits, quotas
        self.rates = {t: r for t, r in self.rates.items() if _same_rate(limits.get(t), r)}
        counting = any(q.max_running or q.max_pending for q in quotas.values()) or any(
            lim.concurrency for lim in limits.values()
        )
        rebuild = counting and not self.counting
        self.counting = counting
        self._holds = bool(limits) or any(q.max_running for q in quotas.values())
        self.rated = any(lim.rate for lim in limits.values())
        if not counting:
            self.active_by_type, self.active_by_owner, self.queued_by_owner = {}, {}, {}
        return rebuild

    def begin(self) -> None:
        """A dispatch begins: it finds anew what rate limits hold back."""
        self.wake = None

    def quota(self, owner: str) -> Quota | None:
        return self.quotas.get(owner) or self.quotas.get(ANY_USER)

    def weight(self, owner: str) -> float:
        quota = self.quota(owner)
        return 1.0 if quota is None else quota.weight

    def limited(self, task_type: str) -> bool:
        return task_type in self.limits

    # -- counting --------------------------------------------------------------------------

    def recount(self, tasks: Iterable[tuple[str, str, TaskState]]) -> None:
        """Counts from scratch, from (type, owner, state) of every task."""
        self.active_by_type, self.active_by_owner, self.queued_by_owner = {}, {}, {}
        for task_type, owner, state in tasks:
            self.moved(task_type, owner, None, state)

    def moved(
        self, task_type: str, owner: str, old: TaskState | None, new: TaskState | None
    ) -> None:
        """A task went from ``old`` to ``new`` (None: it did not exist)."""
        if old is new:
            return
        if old in ACTIVE:
            _add(self.active_by_type, task_type, -1)
            _add(self.active_by_owner, owner, -1)
        elif old in QUEUED:
            _add(self.queued_by_owner, owner, -1)
        if new in ACTIVE:
            _add(self.active_by_type, task_type, 1)
            _add(self.active_by_owner, owner, 1)
        elif new in QUEUED:
            _add(self.queued_by_owner, owner, 1)

    # -- decisions -------------------------------------------------------------------------

    def admits(self, task_type: str, owner: str, now: float) -> bool:
        """Whether a task of ``task_type`` owned by ``owner`` may start now."""
        return not self._holds or self.why(task_type, owner, now) is None

    def why(self, task_type: str, owner: str, now: float) -> str | None:
        """Why such a task may not start now (None: it may)."""
        found = self.limits.get(task_type)
        if found is not None:
            if found.concurrency and self.active_by_type.get(task_type, 0) >= found.concurrency:
                return f"task type {task_type!r} is at its concurrency cap ({found.concurrency})"
            if found.rate:
                rate = self._rate(task_type, found, now)
                if not rate.ready(now):
                    at = rate.when(now)
                    self.wake = at if self.wake is None else min(self.wake, at)
                    return f"task type {task_type!r} is at its rate limit ({found.rate:g}/s)"
        quota = self.quota(owner)
        if (
            quota is not None
            and quota.max_running
            and self.active_by_owner.get(owner, 0) >= quota.max_running
        ):
            return f"user {owner} is at its max_running quota ({quota.max_running})"
        return None

    def took(self, task_type: str, owner: str, now: float) -> None:
        """A task of ``task_type`` was just chosen: it counts (as running, as a start) for
        the choices after it, until :meth:`chosen` hands that to its ``assign`` record."""
        found = self.limits.get(task_type)
        rated = found is not None and bool(found.rate)
        if rated:
            self._rate(task_type, cast(Limit, found), now).take(now)
        if self.counting:
            self.moved(task_type, owner, TaskState.PENDING, TaskState.ASSIGNED)
        if rated or self.counting:
            self._lent.append((task_type, owner))

    def chosen(self) -> None:
        """The choices of one dispatch are about to be recorded (and counted then)."""
        for task_type, owner in reversed(self._lent):
            if self.counting:
                self.moved(task_type, owner, TaskState.ASSIGNED, TaskState.PENDING)
            rate = self.rates.get(task_type)
            if rate is not None:
                rate.untake()
        self._lent.clear()

    def started(self, task_type: str, at: float) -> None:
        """A task of ``task_type`` was assigned at ``at`` (an ``assign`` record applied, in
        every replica): a start its rate limit counts."""
        found = self.limits.get(task_type)
        if found is not None and found.rate:
            self._rate(task_type, found, at).take(at)

    def caps(self, owner: str) -> bool:
        """Whether ``owner`` has a ``max_pending`` quota (its submissions are checked)."""
        quota = self.quota(owner)
        return quota is not None and quota.max_pending is not None

    def refuses(self, owner: str, more: int) -> str | None:
        """Why ``more`` new tasks of ``owner`` would pass its ``max_pending`` (None: fine)."""
        quota = self.quota(owner)
        if quota is None or not quota.max_pending:
            return None
        queued = self.queued_by_owner.get(owner, 0)
        if queued + more <= quota.max_pending:
            return None
        return (
            f"user {owner} has {queued} task(s) waiting to run and its max_pending quota is "
            f"{quota.max_pending}: {more} more would pass it"
        )

    def _rate(self, task_type: str, found: Limit, now: float) -> Rate:
        rate = self.rates.get(task_type)
        if rate is None:
            rate = self.rates[task_type] = Rate(found.rate or 1.0, found.burst or 1, now)
        return rate


def _same_rate(found: Limit | None, rate: Rate) -> bool:
    return found is not None and found.rate == rate.rate and found.burst == rate.burst


def _add(counts: dict[str, int], key: str, n: int) -> None:
    left = counts.get(key, 0) + n
    if left:
        counts[key] = left
    else:
        counts.pop(key, None)
