"""``mutirao up``: a whole local cluster as child processes, supervised until Ctrl-C/SIGTERM.

It starts the orchestrator, waits until it is ready, starts N workers with the cluster's
join token, creates a development admin user on first use, prints how to log in, and
restarts any child that dies (a crashed worker comes back under the same id).

A worker that dies is replaced by a *warm spare*: a ``mutirao worker --spare`` process
started ahead of time, its interpreter up and its modules imported, waiting on standard
input for the id it is to take. Starting a fresh interpreter costs ~0.5 s, during which the
cluster runs a worker short; handing the id to a spare costs milliseconds (Ray's raylet
keeps a pool of started workers for the same reason). Another spare is then started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
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
    ADMIN,
    JOIN_TOKEN_FILE,
    SECRET_FILE,
    USERS_FILE,
    TokenSigner,
    User,
    UserStore,
    read_or_create_secret,
)
from mutirao.autoscale import Autoscaler, Load, parse_range
from mutirao.client.credentials import CLUSTER_FILE
from mutirao.private import private_dir
from mutirao.settings import TlsSettings
from mutirao.tls import ORCHESTRATOR, WORKER, LocalCa, client_context, local_ca

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
    p.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="start and stop workers on queue depth and wait time, between MIN and MAX "
        "(instead of --workers): up when a task waited 1 s, down one at a time after the "
        "cool-down without a change; a worker stopped drains first",
    )
    p.add_argument(
        "--autoscale-cooldown",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds without a change before --autoscale stops a worker [10]",
    )
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
    p.add_argument(
        "--spares",
        type=int,
        default=1,
        help="warm spare workers kept started, each ready to replace a worker that dies [1]",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS and WSS on every link, with a CA and certificates made in DATA_DIR/tls "
        "(kept for the next run); cluster.json and the banner say where the CA is",
    )
    p.add_argument(
        "--tls-client-auth",
        action="store_true",
        help="--tls, and mutual TLS: workers and the standby must present their certificate",
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
    assign: str | None = None
    """For a worker: the line that turns a warm spare into it ("ID PORT")."""
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self, spare: subprocess.Popen[bytes] | None = None) -> None:
        """Start the child: hand ``spare`` (a warm spare worker) its id, or spawn it."""
        self.started_at = time.monotonic()
        if spare is not None and self.assign is not None:
            assert spare.stdin is not None
            try:
                spare.stdin.write(self.assign.encode() + b"\n")
                spare.stdin.close()
                self.proc = spare
                return
            except BrokenPipeError:
                spare.wait()  # it died since it was taken; start afresh
        self.proc = subprocess.Popen(self.argv)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def _poll(
    request: urllib.request.Request,
    ok: Callable[[Any], bool],
    timeout: float,
    what: str,
    context: ssl.SSLContext | None,
) -> None:
    """Poll ``request`` until ``ok(json body)``; exit with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=1, context=context) as resp:
                if ok(json.load(resp)):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} after {timeout:.0f}s")
        time.sleep(0.05)


def _wait_ready(url: str, timeout: float, context: ssl.SSLContext | None) -> None:
    _poll(
        urllib.request.Request(url + "/readyz"),
        lambda body: body["role"] == "active",
        timeout,
        f"orchestrator at {url} not ready",
        context,
    )


def _wait_workers(
    url: str, token: str, count: int, timeout: float, context: ssl.SSLContext | None
) -> None:
    request = urllib.request.Request(
        url + "/v1/workers", headers={"Authorization": f"Bearer {token}"}
    )
    _poll(
        request,
        lambda body: sum(w["state"] == "alive" for w in body["workers"]) >= count,
        timeout,
        f"fewer than {count} workers registered",
        context,
    )


def _dev_credentials(data_dir: Path) -> tuple[str, str]:
    """The development admin user: on first use its password is made (and kept beside the
    data) and it goes in the bootstrap users file, which the first leader imports."""
    password_file = data_dir / "dev.password"
    first = not password_file.exists()
    password = read_or_create_secret(password_file, make=12)
    if first:
        UserStore(data_dir / USERS_FILE).add(DEV_USER, password, role=ADMIN, replace=True)
    return DEV_USER, password


def _tls_argv(ca: LocalCa | None, role: str, client_auth: bool) -> list[str]:
    if ca is None:
        return []
    argv = ["--tls-cert", str(ca.cert(role)), "--tls-key", str(ca.key(role))]
    return [*argv, "--tls-ca", str(ca.ca), *(["--tls-client-auth"] if client_auth else [])]


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


def _workers(
    args: argparse.Namespace, urls: list[str], tls_argv: list[str]
) -> tuple[Callable[[int], Child], Spares]:
    """How to make worker W<i>, and the warm spares."""
    first_port = args.port + 100 if args.worker_port is None else args.worker_port
    worker_argv = [
        sys.executable, "-m", "mutirao", "worker",
        "--host", args.host,
        "--url", ",".join(urls),
        "--slots", str(args.slots),
        "--log-dir", str(args.log_dir),
        "--log-level", args.log_level,
        *tls_argv,
    ]  # fmt: skip
    worker_argv += ["--allow-crash"] if args.allow_crash else []
    for module in args.tasks:
        worker_argv += ["--tasks", module]

    def make(i: int) -> Child:
        port = _worker_port(args.host, first_port, i)
        argv = [*worker_argv, "--id", f"W{i}", "--port", str(port)]
        return Child(f"worker W{i}", argv, assign=f"W{i} {port}")

    return make, Spares([*worker_argv, "--spare"], args.spares if args.workers else 0)


def _scaler(args: argparse.Namespace) -> Autoscaler | None:
    """The autoscaler of ``--autoscale MIN:MAX`` (then MIN workers to start with)."""
    if args.autoscale is None:
        return None
    try:
        low, high = parse_range(args.autoscale)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    args.workers = low
    return Autoscaler(low, high, args.slots, cooldown=args.autoscale_cooldown)


def run_up(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.slots < 1:
        raise SystemExit("error: --workers must be >= 0 and --slots >= 1")
    scaler = _scaler(args)
    root: Path = args.data_dir
    primary, backup = root / "primary", root / "backup"
    primary.mkdir(parents=True, exist_ok=True)
    client_auth = args.tls_client_auth
    tls_on = args.tls or client_auth
    if tls_on:
        private_dir(root / "tls")
    ca = local_ca(root / "tls", [args.host, socket.gethostname()]) if tls_on else None
    context = client_context(TlsSettings(ca=str(ca.ca))) if ca else None
    scheme = "https" if ca else "http"
    urls = [f"{scheme}://{args.host}:{args.port}"]
    user, password = _dev_credentials(primary)
    join_token = read_or_create_secret(root / JOIN_TOKEN_FILE)
    os.environ["MUTIRAO_AUTH_JOIN_TOKEN"] = join_token  # inherited by every child
    node_tls = _tls_argv(ca, ORCHESTRATOR, client_auth)
    argv = _orchestrator_argv(args, "orchestrator", args.port, primary)
    children = [Child("orchestrator", [*argv, *node_tls])]
    if not args.no_backup:
        urls.append(f"{scheme}://{args.host}:{args.port + 1}")
        argv = [*_orchestrator_argv(args, "backup", args.port + 1, backup), *node_tls]
        children.append(Child("backup", [*argv, "--url", urls[0]]))
    make_worker, spares = _workers(args, urls, _tls_argv(ca, WORKER, client_auth))
    workers = Workers(make_worker, args.workers, scaler)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        children[0].start()
        _wait_ready(urls[0], 30, context)
        token = TokenSigner(read_or_create_secret(primary / SECRET_FILE)).mint(
            User(user, ADMIN), time.time(), 30 * 24 * 3600
        )
        for child in [*children[1:], *workers.running.values()]:
            child.start()
        _wait_workers(urls[0], token, args.workers, 30, context)
        spares.fill()
        ca_file = str(ca.ca.resolve()) if ca else ""
        info = {"urls": urls, "user": user, "password": password, "token": token, "ca": ca_file}
        _write_cluster_file(root, info)
        print(
            _banner(
                urls,
                user,
                password,
                token,
                ca=ca_file,
                workers=args.workers,
                data_dir=root,
                log_dir=args.log_dir,
            ),
            flush=True,
        )
        load = None if scaler is None else _cluster_load(urls, token, context)
        _supervise(children, workers, spares, load)
    except _Stop as stop:
        count = len(children) + len(workers.all()) + len(spares.procs)
        print(f"\nmutirao up: {stop}: stopping {count} process(es)...", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _shutdown([*children, *workers.all()], spares)
    return 0


def _write_cluster_file(data_dir: Path, info: dict[str, Any]) -> None:
    path = data_dir / CLUSTER_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({k: v for k, v in info.items() if v}, fh)


def _banner(
    urls: list[str],
    user: str,
    password: str,
    token: str,
    *,
    ca: str,
    workers: int,
    data_dir: Path,
    log_dir: Path,
) -> str:
    standby = f", hot standby {urls[1]}" if len(urls) > 1 else " (no standby)"
    trust = f"\n  export MUTIRAO_TLS_CA={ca}" if ca else ""
    curl = f"curl -s --cacert {ca}" if ca else "curl -s"
    return f"""
Mutirão is up: active orchestrator {urls[0]}{standby}, {workers} worker(s).
  data dir {data_dir.resolve()}   logs {log_dir.resolve()}
Development login: user {user!r}, password {password!r}. In another terminal:
  export MUTIRAO_URL={",".join(urls)}{trust}
  mutirao login --user {user}              # or: export MUTIRAO_TOKEN={token}
  mutirao submit echo --payload '"hello"' --wait
  mutirao cluster                          # leader, epoch, standby lag, workers
  mutirao top                              # live view: load, heartbeat age, queue
  {curl} {urls[0]}/metrics | grep ^mutirao_   # Prometheus metrics, docs/metrics.md
Press Ctrl-C to stop everything."""


def _supervise(
    children: list[Child],
    workers: Workers,
    spares: Spares,
    load: Callable[[], Load | None] | None,
) -> None:
    """Restart children as they exit, and scale the workers if ``load`` tells how busy the
    cluster is, until a signal raises :class:`_Stop`."""
    while True:
        # With an autoscaler, a look at the load every second; else sleep until an exit.
        exited = None
        if load is None:
            exited = _next_exit()
        else:
            time.sleep(1.0)
        everyone = [*children, *workers.running.values()]
        # Taken before restarting: a restarted child has a new pid.
        ours = {c.proc.pid for c in [*everyone, *workers.retiring] if c.proc is not None}
        if exited is not None and exited not in ours | spares.pids():
            os.waitpid(exited, 0)  # not ours to supervise; reaped so it is not seen again
        for child in everyone:
            assert child.proc is not None
            code = child.proc.poll()
            if code is not None:
                _restart(child, code, spares)
        spares.reap()
        if load is not None:
            workers.scale(load(), time.monotonic())


class Workers:
    """Workers W1..Wn, restarted when they die; with an autoscaler, started and stopped
    on the load (the one stopped drains, then exits; it is not restarted)."""

    def __init__(self, make: Callable[[int], Child], count: int, scaler: Autoscaler | None) -> None:
        self.make, self.scaler = make, scaler
        self.running = {i: make(i) for i in range(1, count + 1)}
        self.retiring: list[Child] = []

    def all(self) -> list[Child]:
        return [*self.running.values(), *self.retiring]

    def scale(self, load: Load | None, now: float) -> None:
        self.retiring = [c for c in self.retiring if c.proc is not None and c.proc.poll() is None]
        if self.scaler is None or load is None:
            return
        wanted = self.scaler.wanted(len(self.running), load, now)
        while len(self.running) < wanted:
            i = min(set(range(1, wanted + 1)) - set(self.running))
            child = self.running[i] = self.make(i)
            child.start()
            _say(
                f"autoscale: {load.pending} task(s) waiting up to {load.oldest:.1f} s; started "
                f"{child.name} ({len(self.running)} worker(s))"
            )
        while len(self.running) > wanted:
            child = self.running.pop(max(self.running))
            child.stop()
            self.retiring.append(child)
            _say(f"autoscale: idle; {child.name} drains and stops ({len(self.running)} left)")


def _say(line: str) -> None:
    print(f"mutirao up: {line}", file=sys.stderr, flush=True)


def _cluster_load(
    urls: list[str], token: str, context: ssl.SSLContext | None
) -> Callable[[], Load | None]:
    """What the autoscaler reads: ``GET /v1/cluster`` of the first orchestrator that
    answers (any of them holds the replicated counts)."""

    def load() -> Load | None:
        for url in urls:
            request = urllib.request.Request(
                url + "/v1/cluster", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=1, context=context) as resp:
                    view = json.load(resp)
            except (urllib.error.URLError, OSError, ValueError):
                continue
            tasks = view["tasks"]
            active = tasks.get("assigned", 0) + tasks.get("running", 0)
            return Load(tasks.get("pending", 0), active, view.get("oldest_pending", 0.0))
        return None

    return load


def _next_exit() -> int | None:
    """Sleep until a child exits and return its pid, leaving it to be reaped (``WNOWAIT``:
    ``Popen.poll`` does that). Without ``waitid`` (macOS before Python 3.13) wait 50 ms."""
    if not hasattr(os, "waitid"):
        time.sleep(0.05)
        return None
    exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    return None if exited is None else exited.si_pid


def _restart(child: Child, code: int, spares: Spares) -> None:
    child.restarts += 1
    if time.monotonic() - child.started_at < 5:
        time.sleep(1.0)  # a child that dies at once would otherwise spin
    spare = spares.take() if child.assign is not None else None
    how = "a warm spare took its place" if spare else "restarting it"
    print(
        f"mutirao up: {child.name} exited with code {code}; {how} (restart #{child.restarts})",
        file=sys.stderr,
        flush=True,
    )
    child.start(spare)
    spares.fill()


class Spares:
    """Warm spare workers (``mutirao worker --spare``): started, waiting for an id."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.argv = argv
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    def fill(self) -> None:
        while len(self.procs) < self.count:
            self.procs.append(subprocess.Popen(self.argv, stdin=subprocess.PIPE))

    def take(self) -> subprocess.Popen[bytes] | None:
        """A live spare, or None; the caller hands it an id."""
        while self.procs:
            spare = self.procs.pop(0)
            if spare.poll() is None:
                return spare
        return None

    def pids(self) -> set[int]:
        return {spare.pid for spare in self.procs}

    def reap(self) -> None:
        """Forget spares that died (not replaced: a spare that dies unused would die again;
        workers then restart the slow way)."""
        for spare in [s for s in self.procs if s.poll() is not None]:
            self.procs.remove(spare)
            self.count -= 1
            print(
                f"mutirao up: a warm spare worker exited with code {spare.returncode}; "
                f"{self.count} spare(s) kept from now on",
                file=sys.stderr,
                flush=True,
            )

    def stop(self) -> None:
        for spare in self.procs:
            if spare.poll() is None:
                spare.terminate()


def _shutdown(children: list[Child], spares: Spares) -> None:
    spares.stop()
    for child in reversed(children):
        child.stop()
    deadline = time.monotonic() + 10
    procs = [(c.name, c.proc) for c in children] + [("spare", p) for p in spares.procs]
    for name, proc in procs:
        if proc is None:
            continue
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"mutirao up: {name} did not stop in time; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()
