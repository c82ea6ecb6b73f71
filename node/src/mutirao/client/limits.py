"""``mutirao limit set|list|rm`` and ``mutirao quota set|list|rm``: who runs how much."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from mutirao.client.commands import print_json, table
from mutirao.client.http import Client


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _shown(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


async def set_limit(client: Client, args: argparse.Namespace) -> int:
    body = _given(args, "rate", "burst", "concurrency")
    if not body:
        print("error: give --rate, --concurrency or both", file=sys.stderr)
        return 2
    view = await client.request("PUT", f"/v1/limits/{quote(args.type, safe='')}", body)
    print(f"task type {view['type']} limited: {_limit_text(view)}", file=sys.stderr)
    return 0


def _limit_text(view: dict[str, Any]) -> str:
    parts = []
    if view["rate"] is not None:
        parts.append(f"{view['rate']:g}/s (at most {view['burst']} in a second)")
    if view["concurrency"] is not None:
        parts.append(f"{view['concurrency']} at once")
    return ", ".join(parts)


async def list_limits(client: Client, args: argparse.Namespace) -> int:
    views = (await client.request("GET", "/v1/limits"))["limits"]
    if args.json:
        print_json(views)
        return 0
    rows = [
        [v["type"], _shown(v["rate"]), _shown(v["burst"]), _shown(v["concurrency"])] for v in views
    ]
    print(table(rows, ["type", "rate/s", "burst", "concurrency"]) if rows else "no limits")
    return 0


async def remove_limit(client: Client, args: argparse.Namespace) -> int:
    await client.request("DELETE", f"/v1/limits/{quote(args.type, safe='')}")
    print(f"task type {args.type} no longer limited", file=sys.stderr)
    return 0


async def set_quota(client: Client, args: argparse.Namespace) -> int:
    body = _given(args, "weight", "max_running", "max_pending")
    view = await client.request("PUT", f"/v1/quotas/{quote(args.user, safe='*')}", body)
    print(
        f"user {view['user']}: weight {view['weight']:g}, max_running "
        f"{_shown(view['max_running'])}, max_pending {_shown(view['max_pending'])}",
        file=sys.stderr,
    )
    return 0


async def list_quotas(client: Client, args: argparse.Namespace) -> int:
    views = (await client.request("GET", "/v1/quotas"))["quotas"]
    if args.json:
        print_json(views)
        return 0
    rows = [
        [v["user"], _shown(v["weight"]), _shown(v["max_running"]), _shown(v["max_pending"])]
        for v in views
    ]
    header = ["user", "weight", "max running", "max pending"]
    print(table(rows, header) if rows else "no quotas")
    return 0


async def remove_quota(client: Client, args: argparse.Namespace) -> int:
    await client.request("DELETE", f"/v1/quotas/{quote(args.user, safe='*')}")
    print(f"user {args.user}: quota removed", file=sys.stderr)
    return 0
