"""Least-load scheduling with queues, resources, limits and fair share: pure logic (no I/O,
no clock of its own).

Pending tasks wait in *lanes*: one priority heap per (owner, type, queue, resources), higher
priority first, FIFO (by submission sequence) within a priority. A task goes to the eligible
worker (alive, runs its type, serves its queue, has a free slot and room for its resources)
with the lowest load = running / slots, ties broken by worker id. A lane whose head cannot
run anywhere right now never blocks the lanes behind it.

A worker may also take a *window* of attempts beyond its slots, which wait on it to start
as soon as a slot frees (prefetch: no round trip between one task and the next). They count
in its load and are lost with it like running ones. Only tasks that take one cpu and whose
type has no rate or concurrency limit are prefetched, and only by workers that declared no
other resources: a limit counts starts, and a resource must be free when its task starts.

Owners share the cluster by weighted fair share (stride scheduling): each dispatch advances
its owner's *pass* by 1 / weight and the owner with the lowest pass goes next, so a user
with 10,000 queued tasks and one with 10 alternate; priority orders each owner's own tasks.
An owner that had nothing queued comes back at the current pass, without credit banked
while idle.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from mutirao.resources import DEFAULT_DEMAND, Demand, fits

IsCurrent = Callable[["Entry"], bool]
DEFAULT_QUEUE = "default"
DEFAULT_QUEUES = frozenset({DEFAULT_QUEUE})

LaneKey = tuple[str, str, str, Demand]
"""(owner, task type, queue, demand): the tasks one lane holds are interchangeable."""


@dataclass(slots=True)
class Slotted:
    """What the scheduler needs to know about a worker."""

    id: str
    slots: int
    types: frozenset[str]
    running: int = 0
    eligible: bool = True
    """False while the worker is suspect, dead or disconnected."""
    queues: frozenset[str] = DEFAULT_QUEUES
    room: dict[str, float] | None = None
    """Resources left to place tasks on; None: only cpu, as many as free slots (a worker
    that declared nothing else and runs only tasks that ask for one cpu)."""
    window: int = 0
    """Attempts it may hold beyond its slots, waiting to start (prefetch)."""

    @property
    def free(self) -> int:
        return self.slots + self.window - self.running if self.eligible else 0

    @property
    def load(self) -> float:
        return self.running / self.slots if self.slots else 1.0


class Gate(Protocol):
    """What may hold a task back beyond free workers: limits and quotas."""

    def admits(self, task_type: str, owner: str, now: float) -> bool: ...

    def took(self, task_type: str, owner: str, now: float) -> None: ...

    def weight(self, owner: str) -> float: ...

    def limited(self, task_type: str) -> bool:
        """Whether a rate or concurrency limit applies to ``task_type``."""


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


class Lane:
    """The queued tasks of one (owner, type, queue, demand)."""

    __slots__ = ("demand", "heap", "owner", "plain", "queue", "type")

    def __init__(self, key: LaneKey) -> None:
        self.owner, self.type, self.queue, self.demand = key
        self.plain = self.demand == DEFAULT_DEMAND
        self.heap: list[Entry] = []


def _fits(worker: Slotted, lane: Lane) -> bool:
    room = worker.room
    if room is None:
        return lane.plain or fits({"cpu": float(worker.slots - worker.running)}, lane.demand)
    for name, amount in lane.demand:  # noqa: SIM110 (``all`` would cost a generator per look)
        if room.get(name, 0.0) < amount:
            return False
    return True


_AVOIDED = 1e9
"""Added to the load of the worker to avoid: it ranks after every other one."""


def pick_worker(
    workers: Iterable[Slotted], lane: Lane, avoid: str | None, prefetch: bool = False
) -> Slotted | None:
    """The least-loaded eligible worker with a free slot and room for ``lane``'s tasks;
    with ``prefetch``, a place in a worker's window counts as a free slot."""
    best: Slotted | None = None
    best_load = 0.0
    task_type, queue = lane.type, lane.queue
    for worker in workers:
        # ``free`` and ``load`` spelt out, and no key tuple: this runs once per worker per
        # dispatched task.
        running, slots = worker.running, worker.slots
        room = worker.room
        # Not on a worker whose every slot a stuck thread holds: nothing would start there.
        limit = slots + worker.window if prefetch and room is None and slots else slots
        if not worker.eligible or running >= limit or task_type not in worker.types:
            continue
        if queue not in worker.queues:
            continue
        if (room is not None or not lane.plain) and not _fits(worker, lane):
            continue
        load = running / slots + (_AVOIDED if worker.id == avoid else 0.0)
        if best is None or load < best_load or (load == best_load and worker.id < best.id):
            best, best_load = worker, load
    return best


def _place(
    heads: list[tuple[Entry, int, Lane]], workers: Sequence[Slotted], gate: Gate | None, now: float
) -> tuple[int, Lane, Slotted] | None:
    """The best head of ``heads`` that can go now, and where; heads that cannot are taken
    off (their lanes stay blocked for the rest of this drain: room only shrinks in one)."""
    while heads:
        entry, i, lane = heapq.heappop(heads)
        if gate is not None and not gate.admits(lane.type, lane.owner, now):
            continue
        worker = pick_worker(workers, lane, entry.avoid, _prefetched(lane, gate))
        if worker is not None:
            return i, lane, worker
    return None


def _prefetched(lane: Lane, gate: Gate | None) -> bool:
    """Whether ``lane``'s tasks may wait in a worker's window (see the module's docstring)."""
    return lane.plain and (gate is None or not gate.limited(lane.type))


def _take(worker: Slotted, lane: Lane) -> None:
    """``worker`` takes one of ``lane``'s tasks (its ``running`` and room, for the next)."""
    if not lane.plain or worker.room is not None:
        room = worker.room
        if room is None:
            room = worker.room = {"cpu": float(worker.slots - worker.running)}
        for name, amount in lane.demand:
            room[name] = room.get(name, 0.0) - amount
    worker.running += 1


class PendingQueue:
    """Pending tasks in lanes (see the module's docstring)."""

    def __init__(self) -> None:
        self._lanes: dict[LaneKey, Lane] = {}
        self._size = 0
        self._passes: dict[str, float] = {}
        self._vtime = 0.0
        """The pass of the owner that went last: where an owner coming back starts."""

    def __len__(self) -> int:
        return self._size

    def push(self, key: LaneKey, entry: Entry) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        heapq.heappush(lane.heap, entry)
        self._size += 1

    def lanes(self) -> Iterator[Lane]:
        yield from self._lanes.values()

    def compact(self, is_current: IsCurrent) -> None:
        """Drop every stale entry (and empty lanes) at once. A standby applies submissions
        (which queue) and assignments (which leave entries behind) but never dispatches,
        which is where stale entries are otherwise dropped; without this its queue would
        grow with every task."""
        size = 0
        for key, lane in list(self._lanes.items()):
            live = [entry for entry in lane.heap if is_current(entry)]
            if not live:
                del self._lanes[key]
                continue
            heapq.heapify(live)
            lane.heap = live
            size += len(live)
        self._size = size
        owners = {lane.owner for lane in self._lanes.values()}
        self._passes = {o: p for o, p in self._passes.items() if o in owners}

    def depth_by_type(self) -> dict[str, int]:
        """Queued entries (stale ones included) by task type."""
        depth: dict[str, int] = {}
        for lane in self._lanes.values():
            if lane.heap:
                depth[lane.type] = depth.get(lane.type, 0) + len(lane.heap)
        return depth

    def drain(
        self,
        workers: Sequence[Slotted],
        is_current: IsCurrent,
        gate: Gate | None = None,
        now: float = 0.0,
    ) -> list[tuple[Entry, Slotted]]:
        """Assign as many queued tasks as free slots, room and ``gate`` allow; returns
        (entry, worker) pairs.

        ``is_current`` tells whether an entry still stands for a pending task: entries are
        deleted lazily, so one left behind by a cancellation, or by an assignment the queue
        did not make (an adopted or replayed one), is dropped when it reaches the top.
        Each choice updates the chosen worker's ``running`` (and room) so the next one sees
        its load, and is told to ``gate``.
        """
        assignments: list[tuple[Entry, Slotted]] = []
        lanes = [lane for lane in self._lanes.values() if lane.heap]
        if len(lanes) == 1:
            # One kind of task queued (the usual case): no choice between heads to make.
            self._drain_one(lanes[0], workers, is_current, assignments, gate=gate, now=now)
            return assignments
        # Per owner, a heap of its lanes' heads: the best goes first, if it can go at all.
        heads: dict[str, list[tuple[Entry, int, Lane]]] = {}
        for i, lane in enumerate(lanes):
            head = self._head(lane, is_current)
            if head is not None:
                heads.setdefault(lane.owner, []).append((head, i, lane))
        for mine in heads.values():
            heapq.heapify(mine)
        vtime, passes = self._vtime, self._passes
        turns = [(max(passes.get(owner, vtime), vtime), owner) for owner in heads]
        heapq.heapify(turns)
        while turns:
            turn, owner = turns[0]
            mine = heads[owner]
            choice = _place(mine, workers, gate, now)
            if choice is None:
                heapq.heappop(turns)  # nothing of this owner can go in this pass
                continue
            i, lane, worker = choice
            entry = heapq.heappop(lane.heap)
            self._size -= 1
            _take(worker, lane)
            if gate is not None:
                gate.took(lane.type, owner, now)
            assignments.append((entry, worker))
            head = self._head(lane, is_current)
            if head is not None:
                heapq.heappush(mine, (head, i, lane))
            if len(turns) > 1:
                self._vtime = turn
                passes[owner] = turn + 1.0 / (1.0 if gate is None else gate.weight(owner))
                heapq.heapreplace(turns, (passes[owner], owner))
        return assignments

    def _head(self, lane: Lane, is_current: IsCurrent) -> Entry | None:
        """The lane's first current entry (stale ones before it are dropped)."""
        heap = lane.heap
        while heap and not is_current(heap[0]):
            heapq.heappop(heap)
            self._size -= 1
        return heap[0] if heap else None

    def _drain_one(
        self,
        lane: Lane,
        workers: Sequence[Slotted],
        is_current: IsCurrent,
        assignments: list[tuple[Entry, Slotted]],
        *,
        gate: Gate | None,
        now: float,
    ) -> None:
        pop, heap = heapq.heappop, lane.heap
        task_type, owner = lane.type, lane.owner
        prefetch = _prefetched(lane, gate)
        while heap:
            entry = heap[0]
            if is_current(entry):
                if gate is not None and not gate.admits(task_type, owner, now):
                    return
                worker = pick_worker(workers, lane, entry.avoid, prefetch)
                if worker is None:
                    return
                _take(worker, lane)
                if gate is not None:
                    gate.took(task_type, owner, now)
                assignments.append((entry, worker))
            pop(heap)
            self._size -= 1
