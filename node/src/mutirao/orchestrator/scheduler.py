"""Least-load scheduling with queues, resources, limits and fair share: pure logic (no I/O,
no clock of its own).

Pending tasks wait in *lanes*: one per (owner, type, queue, resources), higher priority
first, FIFO (by submission sequence) within a priority. A lane keeps the tasks queued in that
order (a submission's, the usual case) in a plain run, one reference each; only the others
(retries, tasks released by their dependencies or their start time) take a heap entry. A
task goes to the eligible worker (alive, runs its type, serves its queue, has a free slot and
room for its resources) with the lowest load = running / slots, ties broken by worker id. A
lane whose head cannot run anywhere right now never blocks the lanes behind it.

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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from mutirao.resources import DEFAULT_DEMAND, Demand, fits

IsCurrent = Callable[[str, int], bool]
"""Whether a queued (task id, attempts it had when queued) still stands for a pending task."""
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


class Queued(Protocol):
    """What the queue reads of a task."""

    @property
    def id(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def seq(self) -> int:
        """Submission sequence: unique per task, FIFO order within a priority."""


Chosen = tuple[str, Slotted]
"""A task id and the worker it goes to."""


class Entry(msgspec.Struct, order=True, frozen=True, gc=False):
    """A task queued out of its lane's order. Ordered field by field in C, as a tuple would
    be (and created ~5x faster than a NamedTuple): ``(priority, seq)`` is unique per
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

    __slots__ = ("demand", "heap", "owner", "plain", "queue", "run", "type")

    def __init__(self, key: LaneKey) -> None:
        self.owner, self.type, self.queue, self.demand = key
        self.plain = self.demand == DEFAULT_DEMAND
        self.heap: list[Entry] = []
        self.run: deque[Queued] = deque()
        """First attempts queued in the lane's order: a reference each, where an entry
        and its heap slot take 64 bytes and a heap push and pop per task."""

    def __len__(self) -> int:
        return len(self.heap) + len(self.run)

    def add(self, item: Queued, attempts: int, avoid: str | None) -> None:
        run = self.run
        if attempts == 0 and avoid is None:
            if not run:
                run.append(item)
                return
            last = run[-1]
            if item.priority < last.priority or (
                item.priority == last.priority and item.seq > last.seq
            ):
                run.append(item)
                return
        heapq.heappush(self.heap, Entry(-item.priority, item.seq, item.id, attempts, avoid))

    def heap_first(self) -> bool:
        """Whether the next task is the heap's first entry rather than the run's."""
        heap, run = self.heap, self.run
        if not run:
            return True
        if not heap:
            return False
        entry, item = heap[0], run[0]
        return (entry.priority, entry.seq) < (-item.priority, item.seq)

    def first(self) -> tuple[tuple[int, int], str, int, str | None]:
        """The next task (the lane is not empty): its order (negated priority, seq), id,
        attempts when queued and the worker to avoid."""
        if self.heap_first():
            entry = self.heap[0]
            return (entry.priority, entry.seq), entry.task_id, entry.attempts, entry.avoid
        item = self.run[0]
        return (-item.priority, item.seq), item.id, 0, None

    def pop(self) -> None:
        """Drop the next task."""
        if self.heap_first():
            heapq.heappop(self.heap)
        else:
            self.run.popleft()

    def queued(self) -> Iterator[tuple[str, int]]:
        """Every (task id, attempts when queued), stale ones included, in no order."""
        for entry in self.heap:
            yield entry.task_id, entry.attempts
        for item in self.run:
            yield item.id, 0

    def keep(self, is_current: IsCurrent) -> int:
        """Drop every stale task; returns how many are left."""
        self.heap = [e for e in self.heap if is_current(e.task_id, e.attempts)]
        heapq.heapify(self.heap)
        self.run = deque(item for item in self.run if is_current(item.id, 0))
        return len(self)


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


Head = tuple[tuple[int, int], int, str, str | None, Lane]
"""A lane's first current task in a drain: its order, the lane's index (unique: ties between
heads end there), its id, the worker to avoid, the lane."""


class _Ranking:
    """The workers that can take a lane's tasks, least loaded first, in a heap: a pick is
    O(log workers), where :func:`pick_worker` passes over every worker, a cost per task that
    grows with the cluster. Only for lanes whose tasks need one cpu, on workers that declared
    no resources: a take then changes nothing but the taker's load. An entry goes stale
    when its worker takes a task; it is ranked again when it comes first (loads only grow
    during a drain, so the first entry that is up to date is the least loaded worker)."""

    def __init__(self, workers: Iterable[Slotted], lane: Lane, prefetch: bool) -> None:
        self._prefetch = prefetch
        self._heap = [
            (w.running / w.slots, w.id, w)
            for w in workers
            if w.eligible and w.slots and lane.type in w.types and lane.queue in w.queues
        ]
        heapq.heapify(self._heap)

    def pick(self) -> Slotted | None:
        """The least-loaded worker with a free slot (ties: the lowest id), as
        :func:`pick_worker` with nothing to avoid."""
        heap = self._heap
        while heap:
            load, _, worker = heap[0]
            running, slots = worker.running, worker.slots
            if running >= (slots + worker.window if self._prefetch else slots):
                heapq.heappop(heap)
            elif running / slots != load:
                heapq.heapreplace(heap, (running / slots, worker.id, worker))
            else:
                return worker
        return None


def _place(
    heads: list[Head], workers: Sequence[Slotted], gate: Gate | None, now: float
) -> tuple[Head, Slotted] | None:
    """The best head of ``heads`` that can go now, and where; heads that cannot are taken
    off (their lanes stay blocked for the rest of this drain: room only shrinks in one)."""
    while heads:
        head = heapq.heappop(heads)
        lane = head[4]
        if gate is not None and not gate.admits(lane.type, lane.owner, now):
            continue
        worker = pick_worker(workers, lane, head[3], _prefetched(lane, gate))
        if worker is not None:
            return head, worker
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

    def push(self, key: LaneKey, item: Queued, attempts: int = 0, avoid: str | None = None) -> None:
        """Queue ``item``, which had ``attempts`` and ran last on ``avoid``."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        lane.add(item, attempts, avoid)
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
            left = lane.keep(is_current)
            if not left:
                del self._lanes[key]
            size += left
        self._size = size
        owners = {lane.owner for lane in self._lanes.values()}
        self._passes = {o: p for o, p in self._passes.items() if o in owners}

    def depth_by_type(self) -> dict[str, int]:
        """Queued entries (stale ones included) by task type."""
        depth: dict[str, int] = {}
        for lane in self._lanes.values():
            if lane:
                depth[lane.type] = depth.get(lane.type, 0) + len(lane)
        return depth

    def drain(
        self,
        workers: Sequence[Slotted],
        is_current: IsCurrent,
        gate: Gate | None = None,
        now: float = 0.0,
    ) -> list[Chosen]:
        """Assign as many queued tasks as free slots, room and ``gate`` allow; returns
        (task id, worker) pairs.

        ``is_current`` tells whether a queued task still stands for a pending task: they are
        deleted lazily, so one left behind by a cancellation, or by an assignment the queue
        did not make (an adopted or replayed one), is dropped when it reaches the top.
        Each choice updates the chosen worker's ``running`` (and room) so the next one sees
        its load, and is told to ``gate``.
        """
        assignments: list[Chosen] = []
        lanes = [lane for lane in self._lanes.values() if lane]
        if len(lanes) == 1:
            # One kind of task queued (the usual case): no choice between heads to make.
            self._drain_one(lanes[0], workers, is_current, assignments, gate=gate, now=now)
            return assignments
        # Per owner, a heap of its lanes' heads: the best goes first, if it can go at all.
        heads: dict[str, list[Head]] = {}
        for i, lane in enumerate(lanes):
            head = self._head(lane, i, is_current)
            if head is not None:
                heads.setdefault(lane.owner, []).append(head)
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
            (_, i, task_id, _, lane), worker = choice
            lane.pop()
            self._size -= 1
            _take(worker, lane)
            if gate is not None:
                gate.took(lane.type, owner, now)
            assignments.append((task_id, worker))
            head = self._head(lane, i, is_current)
            if head is not None:
                heapq.heappush(mine, head)
            if len(turns) > 1:
                self._vtime = turn
                passes[owner] = turn + 1.0 / (1.0 if gate is None else gate.weight(owner))
                heapq.heapreplace(turns, (passes[owner], owner))
        return assignments

    def _head(self, lane: Lane, i: int, is_current: IsCurrent) -> Head | None:
        """Lane ``i``'s first current task (stale ones before it are dropped)."""
        while lane:
            order, task_id, attempts, avoid = lane.first()
            if is_current(task_id, attempts):
                return order, i, task_id, avoid, lane
            lane.pop()
            self._size -= 1
        return None

    def _drain_one(
        self,
        lane: Lane,
        workers: Sequence[Slotted],
        is_current: IsCurrent,
        assignments: list[Chosen],
        *,
        gate: Gate | None,
        now: float,
    ) -> None:
        heap, run = lane.heap, lane.run
        task_type, owner = lane.type, lane.owner
        prefetch = _prefetched(lane, gate)
        ranking = (
            _Ranking(workers, lane, prefetch)
            if lane.plain and all(w.room is None for w in workers)
            else None
        )
        while True:
            # The run alone (a lane that only had submissions) needs no comparison.
            from_heap = bool(heap) and lane.heap_first()
            if from_heap:
                entry = heap[0]
                task_id, attempts, avoid = entry.task_id, entry.attempts, entry.avoid
            elif run:
                task_id, attempts, avoid = run[0].id, 0, None
            else:
                return
            if is_current(task_id, attempts):
                if gate is not None and not gate.admits(task_type, owner, now):
                    return
                if ranking is not None and avoid is None:
                    worker = ranking.pick()
                else:
                    worker = pick_worker(workers, lane, avoid, prefetch)
                if worker is None:
                    return
                _take(worker, lane)
                if gate is not None:
                    gate.took(task_type, owner, now)
                assignments.append((task_id, worker))
            if from_heap:
                heapq.heappop(heap)
            else:
                run.popleft()
            self._size -= 1
