"""``mutirao schedule add|list|rm|pause|resume``: the cluster's durable schedules."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from mutirao.client.commands import payload_arg, print_json, table
from mutirao.client.http import Client


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


async def add(client: Client, args: argparse.Namespace) -> int:
    task: dict[str, Any] = {"type": args.type, "payload": payload_arg(args.payload)}
    body: dict[str, Any] = {
        "name": args.name,
        "task": task,
        "timezone": args.timezone,
        "overlap": args.overlap,
        "catch_up": args.catch_up,
    }
    if args.cron is not None:
        body["cron"] = args.cron
    else:
        body["every"] = args.every
    view = await client.request("POST", "/v1/schedules", body)
    print(f"schedule {view['name']} added; next tick {_when(view['next_tick'])}", file=sys.stderr)
    return 0


async def list_schedules(client: Client, args: argparse.Namespace) -> int:
    views = (await client.request("GET", "/v1/schedules"))["schedules"]
    if args.json:
        print_json(views)
        return 0
    rows = [
        [
            v["name"],
            v["cron"] or f"every {v['every']:g} s",
            v["task"]["type"],
            "paused" if v["paused"] else "active",
            _when(v["last_tick"]),
            _when(v["next_tick"]),
            f"{v['fires']}/{v['misses']}",
        ]
        for v in views
    ]
    header = ["name", "schedule", "type", "state", "last tick", "next tick", "fires/misses"]
    print(table(rows, header) if rows else "no schedules")
    return 0


async def remove(client: Client, args: argparse.Namespace) -> int:
    await client.request("DELETE", f"/v1/schedules/{args.name}")
    print(f"schedule {args.name} removed", file=sys.stderr)
    return 0


async def pause(client: Client, args: argparse.Namespace) -> int:
    await client.request("POST", f"/v1/schedules/{args.name}/pause", {})
    print(f"schedule {args.name} paused", file=sys.stderr)
    return 0


async def resume(client: Client, args: argparse.Namespace) -> int:
    view = await client.request("POST", f"/v1/schedules/{args.name}/resume", {})
    print(f"schedule {args.name} resumed; next tick {_when(view['next_tick'])}", file=sys.stderr)
    return 0
