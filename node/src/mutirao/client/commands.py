"""Client subcommands: login, logout, submit, status, result, tasks, workers, cancel, cluster."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import sys
import time
from typing import Any

import orjson

from mutirao.client import credentials
from mutirao.client.http import Client
from mutirao.client.progress import Progress
from mutirao.protocol import TaskView, WorkerView

BATCH = 1000


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _task_rows(tasks: list[TaskView]) -> str:
    rows = [
        [
            t["id"],
            t["type"],
            t["state"],
            str(len(t["attempts"])),
            t["attempts"][-1]["worker"] if t["attempts"] else "-",
            _short(t["result"] if t["state"] != "failed" else t["error"]),
        ]
        for t in tasks
    ]
    return table(rows, ["id", "type", "state", "attempts", "worker", "result"])


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def worker_table(workers: list[WorkerView]) -> str:
    rows = [
        [
            w["id"],
            w["state"],
            f"{w['running']}/{w['slots']}" + (f" +{w['stuck']} stuck" if w.get("stuck") else ""),
            f"{w['load']:.2f}",
            f"{w['heartbeat_age']:.1f}s",
            ",".join(w.get("queues", ["default"])),
            w["url"],
        ]
        for w in workers
    ]
    return table(rows, ["worker", "state", "running", "load", "heartbeat", "queues", "url"])


def read_password(args: argparse.Namespace, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise SystemExit(
            "error: no terminal to ask for the password: give it on standard input with "
            "--password-stdin (e.g. `echo $PW | mutirao login --user NAME --password-stdin`)"
        )
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise SystemExit("error: passwords do not match")
    return password


async def login(client: Client, args: argparse.Namespace) -> int:
    if not args.user and not sys.stdin.isatty():
        raise SystemExit("error: no terminal to ask for the user name: give --user NAME")
    user = args.user or await asyncio.to_thread(input, "User: ")
    password = await asyncio.to_thread(read_password, args, False)
    token = await client.login(user, password)
    if args.print_token:
        print(token)
        return 0
    path = credentials.save(client.urls, token, user, client.refresh_token, client.ca)
    print(f"logged in as {user}; tokens saved to {path}", file=sys.stderr)
    return 0


async def logout(client: Client, args: argparse.Namespace) -> int:
    await client.logout()
    saved = credentials.load()
    if saved.get("token") == client.token:
        credentials.forget()
    print("logged out: the session's tokens are revoked", file=sys.stderr)
    return 0


def payload_arg(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"error: --payload is not valid JSON: {exc}") from None


_OPTIONS = ("priority", "max_attempts", "timeout", "after", "on_failure", "keep_result", "queue")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """The task ``mutirao submit`` sends, from its arguments."""
    spec: dict[str, Any] = {"type": args.type, "payload": payload_arg(args.payload)}
    spec.update((name, getattr(args, name)) for name in _OPTIONS if getattr(args, name) is not None)
    if args.resources:
        spec["resources"] = _resources(args.resources)
    spec.update(_timing(args))
    return spec


def _timing(args: argparse.Namespace) -> dict[str, Any]:
    """``not_before`` and ``retry`` of a submission, from --countdown/--at/--retry-*."""
    out: dict[str, Any] = {}
    if args.countdown is not None:
        out["not_before"] = time.time() + args.countdown
    elif args.at is not None:
        out["not_before"] = _instant(args.at)
    if args.retry_delay is not None or args.retry_backoff is not None:
        retry = {"delay": args.retry_delay or 0.0}
        if args.retry_backoff is not None:
            retry["backoff"] = args.retry_backoff
        out["retry"] = retry
    return out


def _resources(entries: list[str]) -> dict[str, str]:
    """``--resources gpu=1,memory=4Gi`` as the task's ``resources`` (the server reads the
    quantities, and names the one it cannot)."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep:
            raise SystemExit(f"error: --resources wants NAME=QUANTITY, got {entry!r}")
        out[name.strip()] = value.strip()
    return out


def _instant(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"error: --at {text!r} is neither ISO 8601 (2026-12-24T18:00:00+01:00) nor unix seconds"
        ) from None
    return moment.timestamp()  # naive: local time, as `date` shows it


async def submit(client: Client, args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.count == 1:
        if args.key:
            spec["key"] = args.key
        wait = 30.0 if args.wait else 0.0  # one round trip for the common short task
        task = await client.submit(spec.pop("type"), spec.pop("payload"), wait=wait, **spec)
        ids = [task["id"]]
    else:
        ids = await _submit_many(client, spec, args)
    if not args.wait:
        if args.json:
            print_json({"ids": ids})
        else:
            print("\n".join(ids))
        return 0
    views = await _wait_all(client, ids, show=args.count > 1)
    if args.json:
        print_json(views if args.count > 1 else views[0])
    elif args.count == 1:
        _print_result(views[0])
    else:
        _print_summary(views)
    return 0 if all(v["state"] == "succeeded" for v in views) else 1


def _print_summary(views: list[TaskView]) -> None:
    """``94 succeeded, 6 failed``, then why, each distinct error once with its count (the
    most frequent first, at most 5)."""
    states: dict[str, int] = {}
    errors: dict[str, int] = {}
    for view in views:
        states[view["state"]] = states.get(view["state"], 0) + 1
        if view["state"] != "succeeded":
            error = view["error"] or f"{view['state']}, no reason given"
            errors[error] = errors.get(error, 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    ranked = sorted(errors.items(), key=lambda item: -item[1])
    for error, n in ranked[:5]:
        print(f"  {n} x {error}", file=sys.stderr)
    if len(ranked) > 5:
        more = len(ranked) - 5
        print(f"  and {more} other error(s): mutirao tasks --state failed", file=sys.stderr)


async def _submit_many(client: Client, spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    progress = Progress(args.count, "submitted")
    ids: list[str] = []
    prefix = args.key or ""
    for start in range(0, args.count, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, args.count)):
            item = dict(spec)
            if prefix:
                item["key"] = f"{prefix}-{i}"
            batch.append(item)
        ids += [t["id"] for t in await client.submit_batch(batch)]
        progress.update(len(ids))
    return ids


async def _wait_all(client: Client, ids: list[str], show: bool) -> list[TaskView]:
    progress = Progress(len(ids), "finished") if show else None
    views: list[TaskView] = []
    for start in range(0, len(ids), BATCH):
        views += await client.wait_many(ids[start : start + BATCH], timeout=3600)
        if progress is not None:
            progress.update(len(views))
    return views


def _print_result(view: TaskView) -> None:
    if view["state"] == "succeeded":
        print(orjson.dumps(view["result"]).decode())
    elif view["state"] in ("failed", "cancelled"):
        print(f"task {view['id']} {view['state']}: {view['error'] or ''}", file=sys.stderr)
    else:
        print(f"task {view['id']} is still {view['state']}", file=sys.stderr)


async def status(client: Client, args: argparse.Namespace) -> int:
    view = await client.get(args.id)
    if args.json:
        print_json(view)
        return 0
    print(_task_rows([view]))
    if view.get("pending_reason"):
        print(f"  waiting: {view['pending_reason']}")
    for a in view["attempts"]:
        print(
            f"  attempt {a['attempt']} on {a['worker']}: {a['outcome'] or 'in progress'}"
            + (f" ({a['error']})" if a["error"] else "")
        )
    return 0


async def result(client: Client, args: argparse.Namespace) -> int:
    view = await client.wait(args.id, args.timeout) if args.wait else await client.get(args.id)
    if args.json:
        print_json(view)
    else:
        _print_result(view)
    return 0 if view["state"] == "succeeded" else 1


async def tasks(client: Client, args: argparse.Namespace) -> int:
    page = await client.task_page(state=args.state, limit=args.limit, after=args.after)
    views = page["tasks"]
    if args.json:
        print_json(views)
        return 0
    print(_task_rows(views) if views else "no tasks")
    if page["next"]:
        print(
            f"{len(views)} of {page['total']} shown, newest first; the next ones: "
            f"mutirao tasks --after {page['next']}",
            file=sys.stderr,
        )
    return 0


async def workers(client: Client, args: argparse.Namespace) -> int:
    views = await client.workers()
    if args.json:
        print_json(views)
    else:
        print(worker_table(views) if views else "no workers registered")
    return 0


async def cancel(client: Client, args: argparse.Namespace) -> int:
    view = await client.cancel(args.id)
    if args.json:
        print_json(view)
    else:
        print(f"task {view['id']} is {view['state']}")
    return 0


async def cluster(client: Client, args: argparse.Namespace) -> int:
    info = await client.cluster()
    if args.json:
        print_json(info)
        return 0
    print(f"active orchestrator: {info['node']} at {info['url']} (epoch {info['epoch']})")
    standbys = info["standbys"]
    for standby in standbys:
        state = "in sync" if standby["synced"] else "catching up"
        print(
            f"standby: {standby['node']} at {standby['url']}, {state}, "
            f"lag {standby['lag']} batch(es)"
        )
    if not standbys:
        print("standby: none (degraded: acknowledged work survives only on the active's disk)")
    print("tasks: " + ", ".join(f"{k}={v}" for k, v in info["tasks"].items()))
    queue = info["queue"]
    print("queue: " + (", ".join(f"{k}={v}" for k, v in queue.items()) if queue else "empty"))
    print(worker_table(info["workers"]) if info["workers"] else "no workers registered")
    print(f"(as of {time.strftime('%H:%M:%S')})")
    return 0
