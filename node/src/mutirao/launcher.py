"""``mutirao up``: a whole local cluster as child processes, supervised until Ctrl-C/SIGTERM.

It starts the orchestrator, waits until it is ready, starts N workers with the cluster's
join token, creates a development admin user on first use, prints how to log in, and
restarts any child that dies (a crashed worker comes back under the same id).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from mutirao.auth import (
    JOIN_TOKEN_FILE,
    SECRET_FILE,
    USERS_FILE,
    TokenSigner,
    User,
    UserStore,
    read_or_create_secret,
)

CLUSTER_FILE = "cluster.json"
DEV_USER = "dev"


def add_up_parser(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start a local cluster (orchestrator, hot standby, workers)",
        description="Start an orchestrator, a hot-standby backup (on PORT+1) and N workers as "
        "child processes; stop them all on Ctrl-C or SIGTERM. Children that die are restarted "
        "(a restarted orchestrator rejoins as the standby of the one that took over).",
    )
    p.add_argument("--workers", type=int, default=2, help="number of workers [2]")
    p.add_argument("--slots", type=int, default=4, help="slots per worker [4]")
    p.add_argument(
        "--worker-port",
        type=int,
        help="status and /metrics port of worker W1; Wn gets one more each [PORT+100]; "
        "0: any free port",
    )
    p.add_argument("--port", type=int, default=7000, help="orchestrator port [7000]")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind [127.0.0.1]")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("mutirao-data"),
        help="orchestrator state [mutirao-data]",
    )
    p.add_argument("--log-dir", type=Path, default=Path("logs"), help="log files [logs]")
    p.add_argument(
        "--no-backup", action="store_true", help="no hot-standby orchestrator (on PORT+1)"
    )
    p.add_argument(
        "--allow-crash",
        action="store_true",
        help='let workers obey "crash" payloads (failure drills)',
    )
    p.add_argument(
        "--tasks",
        action="append",
        default=[],
        metavar="MODULE",
        help="extra task module for the workers (repeatable)",
    )
    p.add_argument("--log-level", default="INFO", help="children's log level [INFO]")
    p.set_defaults(run=run_up)


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self.started_at = time.monotonic()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def _poll(
    request: urllib.request.Request, ok: Callable[[Any], bool], timeout: float, what: str
) -> None:
    """Poll ``request`` until ``ok(json body)``; exit with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=1) as resp:
                if ok(json.load(resp)):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} after {timeout:.0f}s")
        time.sleep(0.05)


def _wait_ready(url: str, timeout: float) -> None:
    _poll(
        urllib.request.Request(url + "/readyz"),
        lambda body: body["role"] == "active",
        timeout,
        f"orchestrator at {url} not ready",
    )


def _wait_workers(url: str, token: str, count: int, timeout: float) -> None:
    request = urllib.request.Request(
        url + "/v1/workers", headers={"Authorization": f"Bearer {token}"}
    )
    _poll(
        request,
        lambda body: sum(w["state"] == "alive" for w in body["workers"]) >= count,
        timeout,
        f"fewer than {count} workers registered",
    )


def _dev_credentials(data_dir: Path) -> tuple[str, str]:
    """The development admin user, created once; its password is kept beside the users file."""
    password_file = data_dir / "dev.password"
    password = read_or_create_secret(password_file, make=12)
    store = UserStore(data_dir / USERS_FILE)
    try:
        store.verify(DEV_USER, password)
    except Exception:
        store.add(DEV_USER, password, admin=True, replace=True)
    return DEV_USER, password


def _orchestrator_argv(args: argparse.Namespace, command: str, port: int, data: Path) -> list[str]:
    return [
        sys.executable, "-m", "mutirao", command,
        "--host", args.host,
        "--port", str(port),
        "--data-dir", str(data),
        "--lease-dir", str(args.data_dir / "lease"),
        "--log-dir", str(args.log_dir),
        "--log-level", args.log_level,
    ]  # fmt: skip


def _worker_port(host: str, first: int, i: int) -> int:
    """Worker ``i``'s fixed port (so a static Prometheus config can scrape it, see
    docs/prometheus.yml), or 0 (any free port) when it is taken or ``first`` is 0."""
    if first == 0:
        return 0
    port = first + i - 1
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            print(f"mutirao up: port {port} is taken; worker W{i} uses a free one", file=sys.stderr)
            return 0
    return port


def run_up(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.slots < 1:
        raise SystemExit("error: --workers must be >= 0 and --slots >= 1")
    root: Path = args.data_dir
    primary, backup = root / "primary", root / "backup"
    primary.mkdir(parents=True, exist_ok=True)
    urls = [f"http://{args.host}:{args.port}"]
    user, password = _dev_credentials(primary)
    join_token = read_or_create_secret(root / JOIN_TOKEN_FILE)
    os.environ["MUTIRAO_AUTH_JOIN_TOKEN"] = join_token  # inherited by every child
    children = [Child("orchestrator", _orchestrator_argv(args, "orchestrator", args.port, primary))]
    if not args.no_backup:
        urls.append(f"http://{args.host}:{args.port + 1}")
        argv = _orchestrator_argv(args, "backup", args.port + 1, backup)
        children.append(Child("backup", [*argv, "--url", urls[0]]))
    first_port = args.port + 100 if args.worker_port is None else args.worker_port
    for i in range(1, args.workers + 1):
        argv = [
            sys.executable, "-m", "mutirao", "worker",
            "--id", f"W{i}",
            "--host", args.host,
            "--port", str(_worker_port(args.host, first_port, i)),
            "--url", ",".join(urls),
            "--slots", str(args.slots),
            "--log-dir", str(args.log_dir),
            "--log-level", args.log_level,
        ]  # fmt: skip
        argv += ["--allow-crash"] if args.allow_crash else []
        for module in args.tasks:
            argv += ["--tasks", module]
        children.append(Child(f"worker W{i}", argv))

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        children[0].start()
        _wait_ready(urls[0], 30)
        token = TokenSigner(read_or_create_secret(primary / SECRET_FILE)).issue(
            User(user, True), time.time(), 30 * 24 * 3600
        )
        for child in children[1:]:
            child.start()
        _wait_workers(urls[0], token, args.workers, 30)
        _write_cluster_file(root, urls, user, password, token)
        print(
            _banner(
                urls,
                user,
                password,
                token,
                workers=args.workers,
                data_dir=root,
                log_dir=args.log_dir,
            ),
            flush=True,
        )
        _supervise(children)
    except _Stop as stop:
        print(f"\nmutirao up: {stop}: stopping {len(children)} process(es)...", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _shutdown(children)
    return 0


def _write_cluster_file(
    data_dir: Path, urls: list[str], user: str, password: str, token: str
) -> None:
    path = data_dir / CLUSTER_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"urls": urls, "user": user, "password": password, "token": token}, fh)


def _banner(
    urls: list[str],
    user: str,
    password: str,
    token: str,
    *,
    workers: int,
    data_dir: Path,
    log_dir: Path,
) -> str:
    standby = f", hot standby {urls[1]}" if len(urls) > 1 else " (no standby)"
    return f"""
Mutirão is up: active orchestrator {urls[0]}{standby}, {workers} worker(s).
  data dir {data_dir.resolve()}   logs {log_dir.resolve()}
Development login: user {user!r}, password {password!r}. In another terminal:
  export MUTIRAO_URL={",".join(urls)}
  mutirao login --user {user}              # or: export MUTIRAO_TOKEN={token}
  mutirao submit echo --payload '"hello"' --wait
  mutirao cluster                          # leader, epoch, standby lag, workers
  mutirao top                              # live view: load, heartbeat age, queue
  curl -s {urls[0]}/metrics | grep ^mutirao_   # Prometheus metrics, docs/metrics.md
Press Ctrl-C to stop everything."""


def _supervise(children: list[Child]) -> None:
    while True:
        for child in children:
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            child.restarts += 1
            pause = 0.2 if time.monotonic() - child.started_at > 5 else 1.0
            print(
                f"mutirao up: {child.name} exited with code {code}; restarting it "
                f"(restart #{child.restarts})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(pause)
            child.start()
        time.sleep(0.2)


def _shutdown(children: list[Child]) -> None:
    for child in reversed(children):
        child.stop()
    deadline = time.monotonic() + 10
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"mutirao up: {child.name} did not stop in time; killing it", file=sys.stderr)
            child.proc.kill()
            child.proc.wait()
