"""Least-load scheduling, pure logic (no I/O, no clock).

A pending task goes to the eligible worker (alive, runs its type, has a free slot) with the
lowest load = running / slots, ties broken by worker id; higher priority first, FIFO (by
submission sequence) within a priority. A task that cannot run anywhere right now never
blocks tasks of other types behind it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

IsCurrent = Callable[["Entry"], bool]


@dataclass(slots=True)
class Slotted:
    """What the scheduler needs to know about a worker."""

    id: str
    slots: int
    types: frozenset[str]
    running: int = 0
    eligible: bool = True
    """False while the worker is suspect, dead or disconnected."""

    @property
    def free(self) -> int:
        return self.slots - self.running if self.eligible else 0

    @property
    def load(self) -> float:
        return self.running / self.slots if self.slots else 1.0


class Entry(msgspec.Struct, order=True, frozen=True, gc=False):
    """A queued task. Ordered field by field in C, as a tuple would be (and created ~5x
    faster than a NamedTuple, one per queued task): ``(priority, seq)`` is unique per
    task, so later fields only break ties between entries of one task, where ``attempts``
    differs (a stale entry) or the entries are equal (it does not matter)."""

    priority: int  # negated, so the heap pops the highest priority first
    seq: int
    task_id: str
    attempts: int = 0
    """How many attempts the task had when queued; a later attempt makes this entry stale."""
    avoid: str | None = None
    """Worker the previous attempt ran on; another one is preferred when there is a choice."""


def pick_worker(workers: Iterable[Slotted], task_type: str, avoid: str | None) -> Slotted | None:
    """The least-loaded eligible worker with a free slot for ``task_type``, or None."""
    best: Slotted | None = None
    best_load = 0.0
    for worker in workers:
        # ``free`` and ``load`` spelt out, and no key tuple: this runs once per worker per
        # dispatched task.
        running, slots = worker.running, worker.slots
        if not worker.eligible or running >= slots or task_type not in worker.types:
            continue
        # The worker to avoid ranks after every other one (a load can never reach 1 + x).
        load = running / slots + (1.0 if worker.id == avoid else 0.0)
        if best is None or load < best_load or (load == best_load and worker.id < best.id):
            best, best_load = worker, load
    return best


class PendingQueue:
    """Pending tasks, one priority heap per task type."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[Entry]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, task_type: str, entry: Entry) -> None:
        heapq.heappush(self._heaps.setdefault(task_type, []), entry)
        self._size += 1

    def entries(self) -> Iterator[Entry]:
        """Every queued entry, stale ones included, in no particular order."""
        for heap in self._heaps.values():
            yield from heap

    def compact(self, is_current: IsCurrent) -> None:
        """Drop every stale entry at once. A standby applies submissions (which queue) and
        assignments (which leave entries behind) but never dispatches, which is where stale
        entries are otherwise dropped; without this its queue would grow with every task."""
        size = 0
        for task_type, heap in self._heaps.items():
            live = [entry for entry in heap if is_current(entry)]
            heapq.heapify(live)
            self._heaps[task_type] = live
            size += len(live)
        self._size = size

    def depth_by_type(self) -> dict[str, int]:
        return {t: len(h) for t, h in self._heaps.items() if h}

    def drain(
        self, workers: Sequence[Slotted], is_current: IsCurrent
    ) -> list[tuple[Entry, Slotted]]:
        """Assign as many queued tasks as free slots allow; returns (entry, worker) pairs.

        ``is_current`` tells whether an entry still stands for a pending task: entries are
        deleted lazily, so one left behind by a cancellation, or by an assignment the queue
        did not make (an adopted or replayed one), is dropped when it reaches the top.
        Each choice updates the chosen worker's ``running`` so the next one sees its load.
        """
        assignments: list[tuple[Entry, Slotted]] = []
        heaps = [(task_type, heap) for task_type, heap in self._heaps.items() if heap]
        if len(heaps) == 1:
            # One task type queued (the usual case): no choice between heads to make.
            task_type, heap = heaps[0]
            self._drain_one(task_type, heap, workers, is_current, assignments)
            return assignments
        while True:
            choice = self._best_head(workers, is_current)
            if choice is None:
                return assignments
            task_type, worker = choice
            entry = heapq.heappop(self._heaps[task_type])
            self._size -= 1
            worker.running += 1
            assignments.append((entry, worker))

    def _drain_one(
        self,
        task_type: str,
        heap: list[Entry],
        workers: Sequence[Slotted],
        is_current: IsCurrent,
        assignments: list[tuple[Entry, Slotted]],
    ) -> None:
        pop = heapq.heappop
        while heap:
            entry = heap[0]
            if is_current(entry):
                worker = pick_worker(workers, task_type, entry.avoid)
                if worker is None:
                    return
                worker.running += 1
                assignments.append((entry, worker))
            pop(heap)
            self._size -= 1

    def _best_head(
        self, workers: Sequence[Slotted], is_current: IsCurrent
    ) -> tuple[str, Slotted] | None:
        best: tuple[Entry, str, Slotted] | None = None
        for task_type, heap in self._heaps.items():
            while heap and not is_current(heap[0]):
                heapq.heappop(heap)
                self._size -= 1
            if not heap or (best is not None and best[0] < heap[0]):
                continue
            worker = pick_worker(workers, task_type, heap[0].avoid)
            if worker is not None:
                best = (heap[0], task_type, worker)
        return None if best is None else (best[1], best[2])
