"""``mutirao graph ID``: a task and everything it waits for, as a tree with states."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from mutirao.client.commands import BATCH, print_json
from mutirao.client.http import Client
from mutirao.protocol import TaskView


async def fetch(client: Client, task_id: str, limit: int) -> dict[str, TaskView]:
    """The task and its dependencies, transitively (at most ``limit`` tasks), fetched a
    level at a time, up to a batch of tasks per request."""
    views: dict[str, TaskView] = {}
    level = [task_id]
    while level and len(views) < limit:
        level = level[: limit - len(views)]
        for start in range(0, len(level), BATCH):
            for view in await client.wait_many(level[start : start + BATCH], timeout=0):
                views[view["id"]] = view
        level = list(dict.fromkeys(d for v in views.values() for d in v["after"] if d not in views))
    return views


def _label(view: TaskView) -> str:
    state = view["state"]
    text = f"{view['id']}  {view['type']}  {state}"
    if state in ("failed", "cancelled") and view["error"]:
        text += f": {view['error']}"
    return text


def tree(views: dict[str, TaskView], root: str) -> Iterator[str]:
    """Lines of the tree under ``root``; a task reached again (a diamond) is shown once,
    then named with "(above)"; one not fetched (past the limit) with "…"."""
    shown: set[str] = set()
    stack: list[tuple[str, str, str]] = [(root, "", "")]
    while stack:
        task_id, lead, indent = stack.pop()
        view = views.get(task_id)
        if view is None:
            yield f"{lead}{task_id}  …"
            continue
        if task_id in shown:
            yield f"{lead}{task_id}  (above)"
            continue
        shown.add(task_id)
        yield lead + _label(view)
        after = view["after"]
        for i, dep in reversed(list(enumerate(after))):
            last = i == len(after) - 1
            branch, rest = ("└─ ", "   ") if last else ("├─ ", "│  ")
            stack.append((dep, indent + branch, indent + rest))


async def graph(client: Client, args: argparse.Namespace) -> int:
    views = await fetch(client, args.id, args.limit)
    if args.json:
        print_json(list(views.values()))
        return 0
    for line in tree(views, args.id):
        print(line)
    states: dict[str, int] = {}
    for view in views.values():
        states[view["state"]] = states.get(view["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    more = f" (stopped at --limit {args.limit})" if len(views) >= args.limit else ""
    print(f"{len(views)} task(s): {summary}{more}")
    return 0
