"""``mutirao top``: a live view of the cluster, refreshed in place.

Shows the leader and its epoch, the standbys, task counts with the throughput since the
last refresh, the queue, and every worker with its load and heartbeat age. On a terminal
each refresh redraws the screen (ANSI clear and home); otherwise (a pipe, a file, ``watch``)
each one is printed after the previous. ``--once`` prints one screen; Ctrl-C exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import orjson

from mutirao.client.commands import table
from mutirao.client.http import ApiError, Client, Unreachable
from mutirao.protocol import WorkerView

T = TypeVar("T")

CLEAR_HOME = "\x1b[H\x1b[2J"
"""Cursor home, then erase the screen: the next screen replaces the previous one."""

_BAR = 10


@dataclass
class Sample:
    """What one refresh fetched: the cluster view (``GET /v1/cluster``, for admins)."""

    at: float
    workers: list[WorkerView]
    cluster: dict[str, Any]


@dataclass
class Throughput:
    """Tasks finished per second between two refreshes."""

    last: tuple[float, int] | None = None
    rate: float | None = None

    def update(self, at: float, finished: int) -> float | None:
        if self.last is not None and at > self.last[0] and finished >= self.last[1]:
            self.rate = (finished - self.last[1]) / (at - self.last[0])
        self.last = (at, finished)
        return self.rate


@dataclass
class Top:
    url: str
    interval: float | None
    """Seconds between refreshes; None for a single screen."""
    throughput: Throughput = field(default_factory=Throughput)

    def render(self, sample: Sample) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(sample.at))
        every = "" if self.interval is None else f", every {self.interval:g}s (Ctrl-C quits)"
        lines = [f"mutirao top: {self.url} at {clock}{every}"]
        lines += self._cluster(sample.cluster, sample.at)
        lines.append("")
        lines.append(worker_rows(sample.workers) if sample.workers else "no workers registered")
        return "\n".join(lines)

    def _cluster(self, info: dict[str, Any], at: float) -> list[str]:
        standbys = ", ".join(
            f"{s['node']} ({'in sync' if s['synced'] else 'catching up'}, lag {s['lag']})"
            for s in info.get("standbys", [])
        )
        tasks: dict[str, int] = info.get("tasks", {})
        finished = sum(tasks.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        rate = self.throughput.update(at, finished)
        queue: dict[str, int] = info.get("queue", {})
        by_type = ", ".join(f"{k} {v}" for k, v in sorted(queue.items()))
        counts = "  ".join(f"{k} {v}" for k, v in tasks.items())
        return [
            f"leader: {info['node']} at {info['url']}, epoch {info['epoch']}; "
            f"standbys: {standbys or 'none (degraded)'}",
            f"tasks: {counts}" + ("" if rate is None else f"  | {rate:.1f} finished/s"),
            f"queue: {sum(queue.values())} pending" + (f" ({by_type})" if queue else ""),
        ]


def _bar(load: float) -> str:
    filled = min(_BAR, max(0, round(load * _BAR)))
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


def worker_rows(workers: list[WorkerView]) -> str:
    rows = [
        [
            w["id"],
            w["state"],
            f"{w['running']}/{w['slots']}",
            f"{_bar(w['load'])} {w['load'] * 100:3.0f}%",
            f"{w['heartbeat_age']:.1f}s",
            ",".join(w["types"]),
        ]
        for w in workers
    ]
    return table(rows, ["worker", "state", "running", "load", "heartbeat", "types"])


async def sample(client: Client) -> Sample:
    info = await client.cluster()
    return Sample(time.time(), info["workers"], info)


def _show(out: TextIO, screen: str, tty: bool) -> None:
    out.write(CLEAR_HOME + screen + "\n" if tty else screen + "\n")
    out.flush()


async def top(client: Client, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise SystemExit("error: --interval must be positive")
    out = sys.stdout
    tty = out.isatty() and not args.once
    view = Top(client.url, None if args.once else args.interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Ctrl-C ends the view normally (exit 0), even in the middle of a request.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        while not stop.is_set():
            try:
                shot = await _unless(stop, sample(client))
            except (Unreachable, ApiError) as exc:
                if args.once or (isinstance(exc, ApiError) and exc.status in (401, 403)):
                    raise  # retrying cannot help
                shot, screen = None, f"mutirao top: {exc} (retrying every {args.interval:g}s)"
            if shot is not None:
                screen = _json_line(shot) if args.json else view.render(shot)
            elif stop.is_set():
                break
            _show(out, screen, tty and not args.json)
            if args.once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return 0


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None (``work`` cancelled) if ``stop`` is set first."""
    job = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (job, stopper):
            if not future.done():
                future.cancel()
        await asyncio.gather(job, stopper, return_exceptions=True)
    return job.result() if not job.cancelled() else None


def _json_line(shot: Sample) -> str:
    return orjson.dumps({"at": shot.at, "workers": shot.workers, "cluster": shot.cluster}).decode()
