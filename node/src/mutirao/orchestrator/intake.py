"""Submissions arriving together are recorded together.

Many clients submitting one task per request make many small engine commands: each one a
journal record, a dispatch, an assign message and a metrics update of its own. The intake
queues the submissions that arrive within one event-loop iteration and hands them to the
engine as one command per owner, then acknowledges each request once the shared record is
durable. A request's answer is unchanged: its own tasks, and whether it created any.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from mutirao.orchestrator.engine import Effects, Engine
from mutirao.orchestrator.tasks import Task
from mutirao.protocol import TaskSpec

Execute = Callable[[Effects], asyncio.Future[None]]


@dataclass(slots=True, eq=False)
class _Submission:
    specs: list[TaskSpec]
    owner: str
    answer: asyncio.Future[tuple[list[Task], bool]]


@dataclass
class Intake:
    engine: Callable[[], Engine]
    """The current engine (a resync replaces it)."""
    execute: Execute
    clock: Callable[[], float]
    require_active: Callable[[], None]
    """Raises unless this node still leads (it may have stepped down since a request came)."""
    _queued: list[_Submission] = field(default_factory=list)

    async def submit(self, specs: list[TaskSpec], owner: str) -> tuple[list[Task], bool]:
        """The tasks of ``specs`` once durably recorded, and whether any of them is new.
        Raises :class:`~mutirao.errors.ValidationError` at once for resources that do not
        parse or an unknown type (when refused)."""
        self.engine().check(specs, batch=len(specs) > 1)
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        submission = _Submission(specs, owner, loop.create_future())
        self._queued.append(submission)
        return await submission.answer

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        by_owner: dict[object, list[_Submission]] = {}
        for submission in queued:
            # A submission with dependencies is a command of its own: its ``#N`` refs
            # count in it alone, and a ref refused refuses it alone.
            # So is one of a user with a max_pending quota: refused, it is refused alone.
            alone = any(spec.after for spec in submission.specs) or self.engine().gates.caps(
                submission.owner
            )
            key: object = submission if alone else submission.owner
            by_owner.setdefault(key, []).append(submission)
        engine, now = self.engine(), self.clock()
        effects = Effects()
        answered: list[tuple[_Submission, list[Task], bool]] = []
        for group in by_owner.values():
            owner = group[0].owner
            specs = [spec for submission in group for spec in submission.specs]
            seq_before = engine.table.seq
            try:
                self.require_active()
                tasks, more = engine.submit(specs, owner, now)
            except Exception as exc:
                # Answered to every request of the group; raised here, nobody would see it.
                for submission in group:
                    if not submission.answer.done():  # its client may have gone meanwhile
                        submission.answer.set_exception(exc)
                continue
            effects.extend(more)
            answered.extend(_shares(group, tasks, seq_before, engine.table.seq))
        durable = self.execute(effects)

        def acknowledge(done: asyncio.Future[None]) -> None:
            failure = None if done.cancelled() else done.exception()
            for submission, mine, created in answered:
                if submission.answer.done():
                    continue
                if done.cancelled():
                    submission.answer.cancel()
                elif failure is not None:
                    submission.answer.set_exception(failure)
                else:
                    submission.answer.set_result((mine, created))

        durable.add_done_callback(acknowledge)


def _shares(
    group: list[_Submission], tasks: list[Task], seq_before: int, seq_after: int
) -> list[tuple[_Submission, list[Task], bool]]:
    """Each submission of ``group`` with its tasks (``tasks`` in their order) and whether it
    created any: tasks numbered after ``seq_before``, each created by the first submission
    of the group naming it (the same key twice in one group is one task)."""
    if len(group) == 1:
        return [(group[0], tasks, seq_after > seq_before)]
    shares = []
    seen: set[str] = set()
    offset = 0
    for submission in group:
        mine = tasks[offset : offset + len(submission.specs)]
        offset += len(submission.specs)
        created = any(t.seq > seq_before and t.id not in seen for t in mine)
        seen.update(t.id for t in mine)
        shares.append((submission, mine, created))
    return shares
