"""Task dependencies (workflows), pure logic.

A task spec may name tasks that must succeed before it runs: ``"after": [ref, ...]``, where
a ref is a task id or ``"#N"``, item N (from 0) of the same batch. Anywhere in its payload a
JSON object that is exactly ``{"$result": ref}`` (or ``{"$result": ref, "path": "a.b.0"}``)
is an *input*: it makes ``ref`` a dependency too and, once every dependency settled, is
replaced by that task's result (or the part of it ``path`` names: object keys, and array
indexes written as digits). A dependency that did not succeed, seen by a task that runs
anyway (``"on_failure": "run"``), is replaced by ``{"$error": ..., "id": ..., "state": ...}``.

This module checks a submission's refs (unknown, foreign, out of the batch, cycles) and
rewrites its inputs; :mod:`mutirao.orchestrator.tasks` settles dependents as tasks finish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from mutirao.errors import DependencyError

RESULT = "$result"
PATH = "path"
ERROR = "$error"


class Spec(Protocol):
    after: list[str] | None


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` takes "²", which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def batch_index(ref: str) -> int | None:
    """N for a ``#N`` ref, None for a task id."""
    if ref[:1] == "#":
        tail = ref[1:]
        if _digits(tail):
            return int(tail)
    return None


def _is_input(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` is exactly ``{"$result": ...}``, with a ``path`` or not (no set made:
    this runs for every object of every payload with inputs)."""
    return RESULT in obj and (len(obj) == 1 or (len(obj) == 2 and PATH in obj))


def _input(obj: dict[str, Any], where: str) -> str | None:
    """The ref of an input object, None for any other object."""
    if not _is_input(obj):
        return None
    ref, path = obj[RESULT], obj.get(PATH, "")
    if not isinstance(ref, str) or not 1 <= len(ref) <= 256:
        raise DependencyError(
            f"{where}: {RESULT} must be a task id or #N (an item of this batch)", field=where
        )
    if not isinstance(path, str):
        raise DependencyError(f"{where}: path must be a string like a.b.0", field=where)
    return ref


def input_refs(payload: Any, where: str) -> list[str]:
    """The refs of every input in ``payload``, in document order; ``where`` names the
    payload field in errors."""
    refs: list[str] = []
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            ref = _input(value, where)
            if ref is not None:
                refs.append(ref)
            else:
                stack.extend(reversed(value.values()))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return refs


def _mapped(payload: Any, visit: Callable[[dict[str, Any]], Any]) -> Any:
    """``payload`` with every input object replaced by ``visit(input)``; parts holding no
    input are shared, not copied."""
    if isinstance(payload, dict):
        if _is_input(payload):
            return visit(payload)
        return {
            k: _mapped(v, visit) if isinstance(v, dict | list) else v for k, v in payload.items()
        }
    if isinstance(payload, list):
        # Scalars as they are, without a call each (a payload is mostly scalars).
        return [_mapped(v, visit) if isinstance(v, dict | list) else v for v in payload]
    return payload


def rename_inputs(payload: Any, ids: Sequence[str] | Mapping[str, str]) -> tuple[Any, bool]:
    """``payload`` with the refs of its inputs renamed: ``#N`` to ``ids[N]`` (a sequence),
    or a name to ``ids[name]`` (a mapping; how the operator names other Tasks); and whether
    it has any input (one pass over the payload for both)."""
    found = False

    def rename(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        found = True
        ref = obj[RESULT]
        if isinstance(ids, Mapping):
            return {**obj, RESULT: ids[ref]} if ref in ids else obj
        index = batch_index(ref)
        return obj if index is None else {**obj, RESULT: ids[index]}

    renamed = _mapped(payload, rename)
    return renamed, found


class MissingInput(Exception):
    """An input's path names nothing in its dependency's result."""


def pick(value: Any, path: str) -> Any:
    """The part of ``value`` that ``path`` (``a.b.0``) names; raises :class:`MissingInput`."""
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and _digits(part) and int(part) < len(value):
            value = value[int(part)]
        else:
            raise MissingInput(path)
    return value


Outcome = tuple[bool, Any]
"""How a dependency settled, as its dependents see it: (succeeded, result or error view)."""


def resolve(payload: Any, outcome: Callable[[str], Outcome]) -> Any:
    """``payload`` with its inputs replaced by what they name; raises
    :class:`MissingInput` (with the ref and path) for a path its result lacks."""

    def substitute(obj: dict[str, Any]) -> Any:
        ref = obj[RESULT]
        ok, value = outcome(ref)
        if not ok:
            return value
        try:
            return pick(value, obj.get(PATH, ""))
        except MissingInput:
            raise MissingInput(ref, obj[PATH]) from None

    return _mapped(payload, substitute)


def error_view(task_id: str, state: str, error: str | None) -> dict[str, Any]:
    """What an input of a dependency that did not succeed becomes."""
    return {ERROR: error or state, "id": task_id, "state": state}


Lookup = Callable[[str], str | None]
"""The owner of a task id, None if there is no such task."""


def plan(
    specs: Sequence[Spec], ids: Sequence[str], new: Sequence[bool], owner: str, lookup: Lookup
) -> list[tuple[int, list[str]]]:
    """The dependencies of each new spec that has some, as task ids: ``(spec index, ids)``.

    ``ids`` is each spec's task id (an idempotency key may give an existing task, ``new``
    False, which waits for nothing new; its refs are checked all the same, as a request
    is refused or not whatever the state). Refuses, naming the field, a ref outside the
    batch, to a task that does not exist or is someone else's, and cycles.
    """
    batch = len(specs) > 1
    edges: dict[int, list[int]] = {}
    planned: list[tuple[int, list[str]]] = []
    for i, spec in enumerate(specs):
        if not spec.after:
            continue
        where = f"tasks[{i}].after" if batch else "after"
        resolved: dict[str, None] = {}
        for ref in spec.after:
            index = batch_index(ref)
            if index is not None:
                if index >= len(specs):
                    raise DependencyError(
                        f"{where}: {ref} names no item of this batch of {len(specs)}",
                        field=where,
                    )
                edges.setdefault(i, []).append(index)
                resolved[ids[index]] = None
            elif lookup(ref) != owner:
                raise DependencyError(
                    f"{where}: no task {ref!r} of {owner} to wait for (its payload's "
                    f"{RESULT} inputs count too)",
                    field=where,
                )
            else:
                resolved[ref] = None
        if new[i]:
            planned.append((i, list(resolved)))
    cycle = _on_cycle(edges)
    if cycle is not None:
        where = f"tasks[{cycle}].after" if batch else "after"
        raise DependencyError(f"{where}: the dependencies form a cycle", field=where)
    return planned


def _on_cycle(edges: dict[int, list[int]]) -> int | None:
    """A node on a cycle of ``edges`` (node -> nodes it waits for), or None."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for root in edges:
        if root in state:
            continue
        stack = [(root, iter(edges.get(root, ())))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                return child
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(edges.get(child, ()))))
    return None
