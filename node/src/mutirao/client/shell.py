"""``mutirao client``: the seed's interactive client, with the CLI's verbs (login, submit,
status, result, tasks, workers, cancel)."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from mutirao.client import commands, credentials
from mutirao.client.http import ApiError, Client, Unreachable

HELP = """commands:
  login [USER]                   log in (asks for the password)
  submit TYPE [JSON_PAYLOAD]     submit a task; the payload is the rest of the line,
                                 e.g. submit echo {"to": "you", "n": 1}
  status ID                      show a task and its attempts
  result ID [WAIT_SECONDS]       show a task's result, waiting if asked
  tasks [STATE]                  list your tasks (also: list)
  workers                        list workers
  cancel ID                      cancel a task
  help | quit"""


@dataclass
class _Auth:
    """The shell's tokens, kept across its commands (each runs a client of its own)."""

    token: str
    refresh: str


async def _one(
    target: credentials.Target, auth: _Auth, fn: Callable[[Client], Awaitable[Any]]
) -> Any:
    async with Client(
        target.urls,
        auth.token,
        refresh_token=auth.refresh,
        on_refresh=credentials.renewed,
        retry_for=3,
        ca=target.ca,
    ) as client:
        try:
            return await fn(client)
        finally:
            auth.token, auth.refresh = client.token, client.refresh_token


def run_shell(target: credentials.Target) -> int:
    auth = _Auth(target.token, credentials.refresh_for(target.token))
    print(f"Mutirão client for {', '.join(target.urls)}. Type 'help' for commands.")
    while True:
        try:
            line = input("mutirao> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command in ("quit", "exit"):
            return 0
        try:
            _dispatch(target, auth, command, rest.strip())
        except (ApiError, Unreachable) as exc:
            print(f"error: {exc}")
        except (ValueError, IndexError) as exc:
            print(f"error: {exc}; type 'help'")


def _dispatch(target: credentials.Target, auth: _Auth, command: str, text: str) -> None:
    """Run one command; ``text`` is the rest of its line (a payload may hold spaces)."""

    def run(fn: Callable[[Client], Awaitable[Any]]) -> Any:
        return asyncio.run(_one(target, auth, fn))

    rest = text.split()

    if command == "login":
        user = rest[0] if rest else input("User: ")
        password = getpass.getpass("Password: ")
        run(lambda c: c.login(user, password))
        credentials.save(target.urls, auth.token, user, auth.refresh, target.ca)
        print(f"logged in as {user}")
    elif command == "submit":
        task_type, _, payload_text = text.partition(" ")
        if not task_type:
            raise ValueError("submit needs a task type")
        try:
            payload = orjson.loads(payload_text) if payload_text.strip() else None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the payload is not valid JSON ({exc})") from None
        view = run(lambda c: c.submit(task_type, payload))
        print(f"submitted {view['id']} ({view['state']})")
    elif command == "status":
        print(commands._task_rows([run(lambda c: c.get(rest[0]))]))
    elif command == "result":
        wait = float(rest[1]) if len(rest) > 1 else 0.0
        view = run(lambda c: c.result(rest[0], wait))
        commands._print_result(view)
    elif command in ("tasks", "list"):
        views = run(lambda c: c.tasks(state=rest[0] if rest else None))
        print(commands._task_rows(views) if views else "no tasks")
    elif command == "workers":
        print(commands.worker_table(run(lambda c: c.workers())))
    elif command == "cancel":
        print(f"task is {run(lambda c: c.cancel(rest[0]))['state']}")
    elif command == "help":
        print(HELP)
    else:
        print(f"unknown command {command!r}; type 'help'")
