"""``mutirao user add|list|remove|passwd|role|revoke``: the running cluster's users.

Each talks to the active orchestrator (``/v1/users``) with the saved login or
``MUTIRAO_TOKEN``; only ``user add --data-dir`` writes a bootstrap file instead, for a
cluster that has no users yet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from mutirao.client import credentials
from mutirao.client.commands import print_json, read_password, table
from mutirao.client.http import Client


async def add(client: Client, args: argparse.Namespace) -> int:
    password = await asyncio.to_thread(read_password, args, not args.password_stdin)
    user = await client.add_user(args.name, password, args.role)
    print(f"user {user['name']} added ({user['role']})", file=sys.stderr)
    return 0


async def list_users(client: Client, args: argparse.Namespace) -> int:
    users = await client.users()
    if args.json:
        print_json(users)
    else:
        print(table([[u["name"], u["role"]] for u in users], ["user", "role"]))
    return 0


async def remove(client: Client, args: argparse.Namespace) -> int:
    await client.remove_user(args.name)
    print(f"user {args.name} removed; its tokens no longer work", file=sys.stderr)
    return 0


def _name(args: argparse.Namespace) -> str:
    """The user named, else the one logged in."""
    name = args.name or credentials.load().get("user")
    if not isinstance(name, str) or not name:
        raise SystemExit("error: name the user (no saved login says who you are)")
    return name


async def passwd(client: Client, args: argparse.Namespace) -> int:
    name = _name(args)
    password = await asyncio.to_thread(read_password, args, not args.password_stdin)
    await client.change_user(name, password=password)
    print(f"password of {name} changed; its other tokens no longer work", file=sys.stderr)
    return 0


async def role(client: Client, args: argparse.Namespace) -> int:
    user = await client.change_user(args.name, role=args.role)
    print(f"user {user['name']} is now {user['role']}", file=sys.stderr)
    return 0


async def revoke(client: Client, args: argparse.Namespace) -> int:
    name = _name(args)
    await client.revoke_user(name)
    print(f"every token of {name} issued until now is revoked", file=sys.stderr)
    return 0
