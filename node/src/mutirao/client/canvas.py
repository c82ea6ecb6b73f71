"""Workflows built on the client and submitted as one batch: ``chain``, ``group``, ``chord``.

A :class:`Signature` is a task not yet submitted (``sig("resize", {...})``). Canvases compose
them, as Celery's do, and :func:`build` turns a canvas into the specs of one batch whose
``after`` and ``{"$result": "#N"}`` refs point at items of the same batch, so the orchestrator
records the whole graph atomically and runs it, whichever client is gone meanwhile:

- ``chain(a, b, c)``: each step waits for the one before; a step submitted without a
  payload gets the previous step's result as its payload (a group's: the list of results).
- ``group(a, b)``: steps that run side by side.
- ``chord(group, callback)``: the callback once every step of the group succeeded.

``result_of(step, path)`` puts a step's result (or a part of it) anywhere in a payload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Signature:
    """One task of a workflow: its type, payload and options (priority, max_attempts,
    timeout, key, on_failure), and steps it waits for besides those its canvas implies."""

    type: str
    payload: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    after: list[Signature] = field(default_factory=list)


def sig(
    task_type: str, payload: Any = None, *, after: Iterable[Signature] = (), **options: Any
) -> Signature:
    """A step: ``options`` are the task spec's (priority, max_attempts, timeout, key,
    on_failure); ``after``: steps it waits for besides those its canvas implies (they are
    submitted with it)."""
    return Signature(task_type, payload, options, list(after))


@dataclass(frozen=True, eq=False)
class ResultOf:
    """A placeholder in a payload: the result of ``step`` (the part ``path`` names)."""

    step: Signature
    path: str = ""


def result_of(step: Signature, path: str = "") -> ResultOf:
    return ResultOf(step, path)


@dataclass(frozen=True, eq=False)
class Group:
    steps: tuple[Canvas, ...]


@dataclass(frozen=True, eq=False)
class Chain:
    steps: tuple[Canvas, ...]


Canvas = Signature | Group | Chain


def group(*steps: Canvas | Iterable[Canvas]) -> Group:
    return Group(tuple(_flat(steps)))


def chain(*steps: Canvas) -> Chain:
    if not steps:
        raise ValueError("a chain needs at least one step")
    return Chain(steps)


def chord(header: Group | Iterable[Canvas], callback: Canvas) -> Chain:
    """``callback`` once every step of ``header`` succeeded; without a payload it gets the
    list of their results."""
    return Chain((header if isinstance(header, Group) else group(header), callback))


def _flat(steps: Iterable[Canvas | Iterable[Canvas]]) -> Iterable[Canvas]:
    for step in steps:
        if isinstance(step, Signature | Group | Chain):
            yield step
        else:
            yield from step


@dataclass
class _Graph:
    nodes: list[Signature] = field(default_factory=list)
    index: dict[int, int] = field(default_factory=dict)
    waits: dict[int, list[Signature]] = field(default_factory=dict)
    """Per node (by id()), what its canvas makes it wait for."""
    piped: dict[int, Any] = field(default_factory=dict)
    """Per node without a payload, in a chain: the results it takes from the step before."""
    extra: set[int] = field(default_factory=set)
    """Nodes added as a step's ``after`` rather than as steps of the canvas."""

    def add(self, node: Signature) -> None:
        if id(node) not in self.index:
            self.index[id(node)] = len(self.nodes)
            self.nodes.append(node)

    def wire(self, canvas: Canvas) -> list[Signature]:
        """Adds the canvas's nodes; returns its outputs (the nodes whose results it gives)."""
        if isinstance(canvas, Signature):
            for before in canvas.after:
                if id(before) not in self.index:
                    self.extra.add(id(before))
                self.add(before)
            self.add(canvas)
            return [canvas]
        if isinstance(canvas, Group):
            return [out for step in canvas.steps for out in self.wire(step)]
        outputs: list[Signature] = []
        for n, step in enumerate(canvas.steps):
            first = len(self.nodes)
            step_outputs = self.wire(step)
            if n:
                for node in self.nodes[first:]:
                    if id(node) not in self.extra:
                        self.waits.setdefault(id(node), []).extend(outputs)
                if isinstance(step, Signature) and step.payload is None:
                    previous = [ResultOf(out) for out in outputs]
                    self.piped[id(step)] = previous[0] if len(previous) == 1 else previous
            outputs = step_outputs
        return outputs


def build(canvas: Canvas) -> tuple[list[dict[str, Any]], list[Signature]]:
    """The specs of one batch for ``canvas``, and the signature of each item (in order)."""
    graph = _Graph()
    graph.wire(canvas)

    def ref(step: Signature) -> str:
        if id(step) not in graph.index:
            raise ValueError(f"result_of a step of type {step.type!r} not in this workflow")
        return f"#{graph.index[id(step)]}"

    def payload(value: Any) -> Any:
        if isinstance(value, ResultOf):
            out = {"$result": ref(value.step)}
            return {**out, "path": value.path} if value.path else out
        if isinstance(value, dict):
            return {k: payload(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [payload(v) for v in value]
        return value

    specs = []
    for node in graph.nodes:
        value = graph.piped.get(id(node), node.payload)
        after = [*node.after, *graph.waits.get(id(node), ())]
        spec: dict[str, Any] = {"type": node.type, "payload": payload(value), **node.options}
        if after:
            spec["after"] = list(dict.fromkeys(ref(step) for step in after))
        specs.append(spec)
    return specs, graph.nodes


@dataclass(frozen=True)
class Workflow:
    """A submitted canvas: the task id of each of its steps."""

    steps: list[Signature]
    ids: list[str]

    def __getitem__(self, step: Signature) -> str:
        for candidate, task_id in zip(self.steps, self.ids, strict=True):
            if candidate is step:
                return task_id
        raise KeyError(f"no step of type {step.type!r} in this workflow")

    @property
    def last(self) -> str:
        """The id of the step built last (a chain's or chord's final step)."""
        return self.ids[-1]

    def handle(self, step: Signature) -> StepHandle:
        """A handle on one step's task, to wait for its result."""
        return StepHandle(self[step])


@dataclass(frozen=True)
class StepHandle:
    """One step of a submitted workflow: ``await handle.result(client)``."""

    id: str

    async def result(self, client: Any, timeout: float = 60.0) -> Any:
        """The step's result once it succeeded; raises :class:`StepFailed` if it failed
        or was cancelled (a dependency's failure names the dependency), ``TimeoutError``
        if it is not finished within ``timeout`` seconds."""
        view = await client.wait(self.id, timeout)
        if view["state"] == "succeeded":
            return view["result"]
        if view["state"] in ("failed", "cancelled"):
            raise StepFailed(self.id, view["state"], view["error"])
        raise TimeoutError(f"task {self.id} is still {view['state']} after {timeout:g} s")


class StepFailed(Exception):
    """A workflow step ended without a result: ``(task id, state, error)``."""
