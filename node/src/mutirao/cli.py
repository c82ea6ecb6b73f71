"""The ``mutirao`` command: servers (orchestrator, worker, up), users and client commands.

Flags override ``MUTIRAO_*`` environment variables, which override the defaults in
:mod:`mutirao.settings`. Every command has ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import importlib
import logging
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mutirao import logs, resources, tls
from mutirao.auth import ADMIN, JOIN_TOKEN_FILE, ROLES, SUBMITTER
from mutirao.client import commands, credentials, graph, limits, schedules, top, users
from mutirao.client.http import ApiError, Client, Unreachable
from mutirao.errors import MutiraoError, ValidationError
from mutirao.private import private_dir
from mutirao.serving import Guard, listen, serve
from mutirao.settings import Settings, SettingsError, WorkerSettings, from_env, validate

log = logging.getLogger("mutirao")

_SETTING = "setting:"


def _flag(parser: argparse.ArgumentParser, *names: str, setting: str, **kw: Any) -> None:
    """A flag that overrides ``setting`` (a dotted path into :class:`Settings`); its usage
    reads ``--port PORT`` (not the setting's internal name)."""
    if "choices" not in kw and "action" not in kw:
        kw.setdefault("metavar", names[-1].lstrip("-").upper().replace("-", "_"))
    parser.add_argument(*names, dest=_SETTING + setting, default=None, **kw)


def _apply_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    for name, value in vars(args).items():
        if not name.startswith(_SETTING) or value is None:
            continue
        *path, leaf = name[len(_SETTING) :].split(".")
        target: Any = settings
        for part in path:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return settings


def _orchestrator_flags(p: argparse.ArgumentParser, *, port: int, node: str, data: str) -> None:
    _flag(p, "--host", setting="host", help="interface to bind [127.0.0.1]")
    _flag(p, "--port", setting="port", type=int, help=f"HTTP port [{port}]")
    _flag(p, "--data-dir", setting="data_dir", type=Path, help=f"state directory [{data}]")
    _flag(p, "--node-id", setting="node_id", help=f"unique name of this orchestrator [{node}]")
    _flag(
        p,
        "--join-token",
        setting="auth.join_token",
        help="the workers' join token [generated into LEASE_DIR/join.token]",
    )
    _flag(
        p,
        "--peer-token",
        setting="auth.peer_token",
        help="secret the orchestrators share for replication; never give it to workers "
        "[generated into LEASE_DIR/peer.token with the file lease; else required]",
    )
    _flag(
        p,
        "--retention",
        setting="tasks.retention",
        type=float,
        help="seconds a finished task and its result are kept [86400]",
    )
    _flag(
        p,
        "--checkpoint-interval",
        setting="journal.checkpoint_interval",
        type=float,
        help="seconds between checkpoints [30]",
    )
    p.add_argument(
        "--no-fsync",
        dest=_SETTING + "journal.fsync",
        action="store_const",
        const=False,
        default=None,
        help="do not fsync the journal (unsafe)",
    )
    _flag(
        p,
        "--lease",
        setting="ha.backend",
        choices=["file", "peer", "kubernetes"],
        help="leader lease backend [file]",
    )
    _flag(
        p,
        "--lease-dir",
        setting="ha.lease_dir",
        type=Path,
        help="directory shared by the orchestrators (file lease) [mutirao-lease]",
    )
    _flag(
        p,
        "--lease-duration",
        setting="ha.lease_duration",
        type=float,
        help="seconds a lease lasts unrenewed [5]",
    )
    _flag(
        p,
        "--peers",
        setting="ha.peers",
        type=_csv,
        help="other orchestrators' URLs, comma-separated (peer lease)",
    )
    _flag(p, "--advertise-url", setting="ha.url", help="URL others reach this node at")
    _flag(
        p,
        "--peer-port",
        setting="ha.peer_port",
        type=int,
        help="serve replication on this port only, not the API's, the same on every "
        "orchestrator (so a firewall can keep it to them) [0: the API port]",
    )
    _common_server(p)
    p.set_defaults(_defaults={"port": port, "node_id": node, "data_dir": Path(data)})


def _csv(text: str) -> list[str]:
    """``a, b,c`` as ``["a", "b", "c"]`` (URLs, queues, resources)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _common_client(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="orchestrator URL(s), comma-separated [MUTIRAO_URL]")
    parser.add_argument("--token", help="bearer token [MUTIRAO_TOKEN, else from `login`]")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _common_server(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--tls-cert",
        setting="tls.cert",
        help="PEM certificate to serve HTTPS with and present to other nodes [plain HTTP]",
    )
    _flag(parser, "--tls-key", setting="tls.key", help="PEM private key of --tls-cert")
    _flag(
        parser,
        "--tls-ca",
        setting="tls.ca",
        help="PEM authority the other nodes' certificates are checked with [system's]",
    )
    parser.add_argument(
        "--tls-client-auth",
        dest=_SETTING + "tls.client_auth",
        action="store_const",
        const=True,
        default=None,
        help="mutual TLS: the worker socket and replication need a node certificate",
    )
    _flag(parser, "--log-level", setting="log.level", help="DEBUG, INFO, WARNING... [INFO]")
    _flag(
        parser,
        "--log-format",
        setting="log.format",
        choices=["text", "json"],
        help="log line format [text]",
    )
    _flag(parser, "--log-dir", setting="log.dir", type=Path, help="rotating log files [logs]")
    _flag(
        parser,
        "--heartbeat-interval",
        setting="heartbeat.interval",
        type=float,
        help="seconds between worker heartbeats [1.0]",
    )
    _flag(
        parser,
        "--heartbeat-timeout",
        setting="heartbeat.timeout",
        type=float,
        help="silence after which a worker is dead [3.0]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mutirao",
        description="Mutirão: distributed, collaborative task processing.",
        epilog="Quick start: `mutirao up` in one terminal; `mutirao login` and "
        "`mutirao submit echo --payload '\"hi\"' --wait` in another.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "orchestrator",
        help="run an orchestrator (active, or standby if another one leads)",
        description="Run an orchestrator: HTTP API, scheduler, journal. It leads if it can "
        "take the lease, else it follows the leader as a hot standby.",
    )
    _orchestrator_flags(p, port=7000, node="orchestrator", data="mutirao-data")
    p.set_defaults(run=_run_orchestrator)

    p = sub.add_parser(
        "backup",
        help="run a hot-standby orchestrator that takes over when the active one dies",
        description="Run an orchestrator that follows the active one (--url) as a hot "
        "standby and takes over automatically. Same code and flags as `orchestrator`, with "
        "defaults for a second process on the same machine.",
    )
    _orchestrator_flags(p, port=7001, node="backup", data="mutirao-data-backup")
    p.add_argument("--url", help="URL(s) of the active orchestrator (the peers to follow)")
    p.set_defaults(run=_run_orchestrator)

    p = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run a worker that executes tasks for the orchestrator.",
    )
    _flag(p, "--id", setting="worker.id", help="worker id [<hostname>-<pid>]")
    _flag(p, "--host", setting="host", help="interface of the worker's status server")
    _flag(p, "--port", setting="worker.port", type=int, help="status server port [free port]")
    _flag(p, "--slots", setting="worker.slots", type=int, help="tasks run at once [4]")
    _flag(
        p,
        "--prefetch",
        setting="worker.prefetch",
        type=int,
        metavar="N",
        help="tasks taken beyond the slots, started as soon as one frees; 0 for long tasks [16]",
    )
    _flag(
        p,
        "--pool",
        setting="worker.pool",
        choices=["processes", "threads"],
        help="where blocking handlers run: a process per slot, killed at its time limit, or "
        "threads that cannot be stopped (one past its limit holds its slot until it returns) "
        "[processes]",
    )
    _flag(
        p,
        "--queues",
        setting="worker.queues",
        type=_csv,
        metavar="NAMES",
        help="take only these queues' tasks, comma-separated [default]",
    )
    _flag(
        p,
        "--resources",
        setting="worker.resources",
        type=_csv,
        metavar="NAME=QTY,...",
        help="what tasks may take here, e.g. gpu=1,memory=16Gi [cpu=SLOTS]",
    )
    p.add_argument(
        "--tasks",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE for @mutirao.task handlers (repeatable)",
    )
    p.add_argument(
        "--allow-crash",
        dest=_SETTING + "worker.allow_crash",
        action="store_const",
        const=True,
        default=None,
        help='obey "crash" payloads (failure drills)',
    )
    p.add_argument("--url", help="orchestrator URL(s), comma-separated [MUTIRAO_URL]")
    _flag(p, "--join-token", setting="auth.join_token", help="join token [MUTIRAO_AUTH_JOIN_TOKEN]")
    p.add_argument(
        "--join-token-file",
        type=Path,
        help="read the join token from this file [LEASE_DIR/join.token if it exists]",
    )
    p.add_argument(
        "--spare",
        action="store_true",
        help="start as a warm spare: load everything, then read 'ID [PORT]' from standard "
        "input and run as that worker (`mutirao up` keeps one, so a worker that dies is "
        "replaced in milliseconds instead of a fresh interpreter's ~0.5 s)",
    )
    _common_server(p)
    p.set_defaults(run=_run_worker)

    from mutirao.launcher import add_up_parser

    add_up_parser(sub)

    _add_user_parser(sub)
    _add_schedule_parser(sub)
    _add_limit_parsers(sub)
    _add_tls_secrets_parser(sub)

    client_commands: list[tuple[str, str, Callable[..., Awaitable[int]]]] = [
        ("login", "log in and save a token", commands.login),
        ("logout", "revoke the token and forget it", commands.logout),
        ("submit", "submit task(s)", commands.submit),
        ("status", "show a task and its attempts", commands.status),
        ("result", "print a task's result", commands.result),
        ("tasks", "list your tasks", commands.tasks),
        ("workers", "list workers with load and heartbeat age", commands.workers),
        ("cancel", "cancel a task (and the tasks waiting for it)", commands.cancel),
        ("graph", "a task and what it waits for, as a tree with states", graph.graph),
        ("cluster", "leader, epoch, queue and workers (admins)", commands.cluster),
        ("top", "live view: workers with load and heartbeat age, queue, tasks", top.top),
    ]
    for name, help_text, fn in client_commands:
        p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        _common_client(p)
        p.set_defaults(run=_client_runner(fn))
        _client_args(name, p)

    p = sub.add_parser("client", help="interactive client (login, submit, status, result...)")
    p.add_argument("--url", help="orchestrator URL(s), comma-separated [MUTIRAO_URL]")
    p.add_argument("--token", help="bearer token [MUTIRAO_TOKEN, else from `login`]")
    p.set_defaults(run=_run_shell)
    return parser


def _client_args(name: str, p: argparse.ArgumentParser) -> None:
    if name == "login":
        p.add_argument("--user", help="user name (prompted if omitted)")
        p.add_argument("--password-stdin", action="store_true", help="read password from stdin")
        p.add_argument("--print-token", action="store_true", help="print the token, save nothing")
    elif name == "submit":
        p.add_argument("type", help="task type (handler name), e.g. echo, sleep, sum")
        p.add_argument("--payload", help="JSON payload, e.g. '{\"seconds\": 1}'")
        p.add_argument("--priority", type=int, help="higher runs first [0]")
        p.add_argument("--max-attempts", type=int, help="attempts before failing [3]")
        p.add_argument("--timeout", type=float, help="seconds per attempt [300]")
        p.add_argument("--key", help="idempotency key (with --count: prefix of per-task keys)")
        p.add_argument("--count", type=int, default=1, help="submit N copies, in batches [1]")
        p.add_argument(
            "--after",
            action="append",
            metavar="ID",
            help="run once task ID succeeded (repeatable); the task is `waiting` until then",
        )
        p.add_argument(
            "--on-failure",
            choices=("cancel", "run"),
            help="if a dependency fails: cancel this task, or run it anyway [cancel]",
        )
        when = p.add_mutually_exclusive_group()
        when.add_argument(
            "--countdown", type=float, metavar="S", help="start no sooner than S seconds from now"
        )
        when.add_argument(
            "--at",
            metavar="TIME",
            help="start no sooner than TIME: ISO 8601 (2026-12-24T18:00:00+01:00; no zone: "
            "local time) or unix seconds",
        )
        p.add_argument(
            "--retry-delay",
            type=float,
            metavar="S",
            help="seconds before the 2nd attempt, doubling after each [the cluster's]",
        )
        p.add_argument("--retry-backoff", type=float, metavar="F", help="growth of that delay [2]")
        p.add_argument(
            "--keep-result", type=float, metavar="S", help="keep the finished task S seconds"
        )
        p.add_argument("--queue", help="only workers serving this queue take it [default]")
        p.add_argument(
            "--resources",
            type=_csv,
            metavar="NAME=QTY,...",
            help="what it takes while it runs, e.g. cpu=2,memory=4Gi,gpu=1 [cpu=1]",
        )
        p.add_argument("--wait", action="store_true", help="wait for the result(s)")
    elif name == "graph":
        p.add_argument("id", help="task id (the last step of a workflow shows all of it)")
        p.add_argument("--limit", type=int, default=1000, help="show at most N tasks [1000]")
    elif name in ("status", "result", "cancel"):
        p.add_argument("id", help="task id")
        if name == "result":
            p.add_argument("--wait", action="store_true", help="block until the task finishes")
            p.add_argument("--timeout", type=float, default=300, help="give up after [300] s")
    elif name == "tasks":
        p.add_argument("--state", help="only tasks in this state")
        p.add_argument("--limit", type=int, default=100, help="at most this many [100]")
        p.add_argument(
            "--after", type=int, metavar="N", help="the next page (the number the last one gave)"
        )
    elif name == "top":
        p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes [1]")
        p.add_argument("--once", action="store_true", help="print one screen and exit")


def client_settings(args: argparse.Namespace) -> credentials.Target:
    """URLs, token and CA: flags, then as :func:`credentials.target` finds them."""
    return credentials.target(_csv(args.url) if args.url else None, getattr(args, "token", None))


KEY_HOLDER = "cluster-admin"
"""Who ``mutirao user`` acts as on a host holding the cluster's token secret."""


def _key_holder_token() -> str:
    """On a host given the cluster's token secret (``MUTIRAO_AUTH_TOKEN_SECRET``: an
    orchestrator pod), an admin token minted with it: whoever holds the key could sign any
    token anyway, and the first admin of a cluster must come from somewhere."""
    from mutirao.auth import TokenSigner, User

    secret = from_env().auth.token_secret
    if not secret:
        return ""
    return TokenSigner(secret).mint(User(KEY_HOLDER, ADMIN), time.time(), 300)


def _client_runner(
    fn: Callable[[Client, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        target = client_settings(args)
        if not target.token and args.command == "user":
            target = target._replace(token=_key_holder_token())
        if args.command == "submit" and args.count < 1:
            raise SystemExit("error: --count must be at least 1")

        async def go() -> int:
            async with credentials.connect(target, on_retry=_say) as client:
                return await fn(client, args)

        return asyncio.run(go())

    return run


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _server_settings(args: argparse.Namespace) -> Settings:
    settings = _apply_flags(from_env(), args)
    if getattr(args, "url", None):
        settings.urls = [u.strip() for u in args.url.split(",") if u.strip()]
    return settings


def _tune_gc() -> None:
    """Let the collector run less often in a long-lived server. A server allocates a few
    objects per task and keeps most of them (the task table, pending attempts), so with the
    default threshold (700) the youngest generation is scanned every few hundred tasks; the
    engine then spends ~6% of its time in the collector. ``freeze`` also takes everything
    loaded at startup out of its sight."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def _run_orchestrator(args: argparse.Namespace) -> int:

    from mutirao.ha.backends import make_lease
    from mutirao.orchestrator.api import create_app, create_peer_app
    from mutirao.orchestrator.checkpoint import RecoveryError
    from mutirao.orchestrator.service import Orchestrator

    settings = from_env()
    defaults = Settings()
    for name, value in args._defaults.items():
        # A backup's own defaults apply unless the environment set that value.
        if getattr(settings, name) == getattr(defaults, name):
            setattr(settings, name, value)
    settings = _apply_flags(settings, args)
    if getattr(args, "url", None):
        settings.ha.peers = [*_csv(args.url), *settings.ha.peers]
    logs.setup(
        "orchestrator",
        settings.node_id,
        level=settings.log.level,
        fmt=settings.log.format,
        directory=settings.log.dir,
    )
    private_dir(settings.data_dir)
    lock = _lock_data_dir(settings.data_dir)
    orch = Orchestrator(validate(settings), make_lease(settings))
    ssl_context = _server_tls(settings)
    log.info(
        "orchestrator %s serving %s://%s:%d (data dir %s)",
        settings.node_id,
        tls.scheme(settings.tls),
        settings.host,
        settings.port,
        settings.data_dir.resolve(),
    )
    _tune_gc()
    try:
        refused = orch.metrics.connections_refused
        guard = Guard(settings.limits, lambda reason: refused.labels(reason).inc())
        app = create_app(orch)
        listeners = [(app, listen(settings.host, settings.port))]
        if settings.ha.peer_port:
            peer = listen(settings.host, settings.ha.peer_port)
            listeners.append((create_peer_app(app), peer))
        serve(listeners, guard, ssl_context=ssl_context, tls_reload=settings.tls.reload_interval)
    except RecoveryError as exc:
        log.critical("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    log.info("orchestrator %s stopped", settings.node_id)
    lock.close()
    return 0


def _server_tls(settings: Settings) -> ssl.SSLContext | None:
    try:
        return tls.server_context(validate(settings).tls)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"error: cannot load --tls-cert/--tls-key/--tls-ca: {exc}") from None


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Lock the data dir for as long as this process lives: the journal has one writer.

    Without it, a second orchestrator started on the same dir by mistake replays the journal,
    then (failing to bind, or at its first checkpoint) compacts away the segment the live
    one is still appending to, losing every task acknowledged after that.
    """
    handle = (data_dir / "orchestrator.lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(
            f"error: data dir {data_dir} is in use by another orchestrator; stop it first "
            "or give this one its own --data-dir"
        ) from None
    return handle


def _check_worker(worker: WorkerSettings) -> None:
    """Refuse worker settings that cannot work, with a message naming the flag."""
    if worker.slots < 1:
        raise SystemExit("error: --slots must be at least 1")
    if worker.prefetch < 0:
        raise SystemExit("error: --prefetch must be 0 or more")
    try:
        resources.capacity(worker.resources, worker.slots, "--resources")
    except ValidationError as exc:
        raise SystemExit(f"error: {exc}") from None
    if worker.pool not in ("processes", "threads"):
        raise SystemExit(f"error: --pool must be processes or threads, not {worker.pool!r}")


def _run_worker(args: argparse.Namespace) -> int:

    from mutirao.registry import REGISTRY
    from mutirao.worker import builtins
    from mutirao.worker.node import WorkerNode, create_app, default_worker_id

    assert builtins  # imported for its @task registrations
    settings = _server_settings(args)
    # The slot processes of blocking handlers import the same modules (worker.pool).
    settings.worker.tasks = [*settings.worker.tasks, *args.tasks]
    # Task modules are found in the working directory, as Celery's -A finds them, also when
    # run as the `mutirao` script (whose sys.path starts at its own directory); the slot
    # processes inherit sys.path.
    if settings.worker.tasks and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in settings.worker.tasks:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"error: cannot import task module {module!r}: {exc}") from None
    if args.spare:
        assigned = sys.stdin.readline()
        if not assigned:
            return 0  # the supervisor went away before it needed this spare
        _assign_spare(settings, assigned)
    settings.worker.id = settings.worker.id or default_worker_id()
    logs.setup(
        "worker",
        settings.worker.id,
        level=settings.log.level,
        fmt=settings.log.format,
        directory=settings.log.dir,
    )
    token = settings.auth.join_token
    shared = settings.ha.lease_dir / JOIN_TOKEN_FILE
    if args.join_token_file is not None:
        token = args.join_token_file.read_text().strip()
    elif not token and shared.exists():
        # Started beside the orchestrators (same working directory): use their token.
        token = shared.read_text().strip()
    if not token:
        raise SystemExit(
            "error: a worker needs the join token: --join-token, "
            "--join-token-file or MUTIRAO_AUTH_JOIN_TOKEN"
        )
    _check_worker(settings.worker)
    ssl_context = _server_tls(settings)
    node = WorkerNode(settings, REGISTRY, token)
    sock = listen(settings.host, settings.worker.port)
    node.url = f"{tls.scheme(settings.tls)}://{settings.host}:{sock.getsockname()[1]}"
    log.info(
        "worker %s (%d slots, types %s) status at %s, orchestrator(s) %s",
        node.id,
        settings.worker.slots,
        ",".join(REGISTRY.names()),
        node.url,
        ",".join(settings.urls),
    )
    _tune_gc()
    serve(
        [(create_app(node), sock)],
        Guard(settings.limits),
        ssl_context=ssl_context,
        tls_reload=settings.tls.reload_interval,
    )
    log.info("worker %s stopped", node.id)
    return 0


def _assign_spare(settings: Settings, line: str) -> None:
    """Give a warm spare the id (and status port) of the worker it replaces."""
    match line.split():
        case [worker_id]:
            settings.worker.id = worker_id
        case [worker_id, port] if port.isascii() and port.isdigit():
            settings.worker.id, settings.worker.port = worker_id, int(port)
        case _:
            raise SystemExit(f"error: --spare expects 'ID [PORT]' on standard input, got {line!r}")


def _add_tls_secrets_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tls-secrets",
        help="create or renew the cluster's certificates in Kubernetes Secrets",
        description="Create or renew the Secrets <prefix>-ca, <prefix>-orchestrator-tls and "
        "<prefix>-worker-tls (type kubernetes.io/tls, keys tls.crt, tls.key, ca.crt) in "
        "NAMESPACE: what the chart's hook Job runs when cert-manager is not installed. "
        "Uses the in-cluster service account, else the kubeconfig.",
    )
    p.add_argument("--namespace", required=True)
    p.add_argument("--prefix", required=True, help="Secret name prefix (the chart's fullname)")
    for role in ("orchestrator", "worker"):
        p.add_argument(
            f"--{role}-host",
            dest=f"{role}_hosts",
            action="append",
            default=[],
            metavar="HOST",
            help=f"DNS name (*.wildcard allowed) or IP the {role} certificate is valid for "
            "(repeatable)",
        )
    p.add_argument("--days", type=float, default=365.0, help="node certificates' life [365]")
    p.add_argument(
        "--renew-before-days",
        type=float,
        default=30.0,
        help="renew a certificate this long before it expires [30]",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label the Secrets (repeatable)",
    )
    p.set_defaults(run=_run_tls_secrets)


def _run_tls_secrets(args: argparse.Namespace) -> int:
    # Imported here: the certificate and Kubernetes libraries would slow every other command.
    from mutirao import kube_certs

    return kube_certs.main(args)


Action = Callable[[str, str, Callable[..., Awaitable[int]]], Any]


def _client_actions(parser: argparse.ArgumentParser, dest: str) -> Action:
    """A function adding a client subcommand ``ACTION`` to ``parser`` (``mutirao user add``,
    ``mutirao schedule rm``...): its help, client flags and coroutine to run."""
    actions = parser.add_subparsers(dest=dest, required=True, metavar="ACTION")

    def action(name: str, help_text: str, fn: Callable[..., Awaitable[int]]) -> Any:
        a = actions.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        _common_client(a)
        a.set_defaults(run=_client_runner(fn))
        return a

    return action


def _add_user_parser(sub: Any) -> None:
    p = sub.add_parser(
        "user",
        help="manage the cluster's users (admins)",
        description="Manage the running cluster's users (kept in its journal), as an admin. "
        "`user add --data-dir DIR` instead writes a bootstrap file, which the first "
        "orchestrator to lead a cluster with no users imports.",
    )
    action = _client_actions(p, "user_command")

    add = action("add", "add a user", users.add)
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default=SUBMITTER, help="what it may do [submitter]")
    add.add_argument("--admin", dest="role", action="store_const", const=ADMIN, help="--role admin")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--data-dir", type=Path, help="write DIR/users.json (bootstrap) instead")
    add.add_argument("--replace", action="store_true", help="with --data-dir: overwrite a user")
    add.set_defaults(run=_run_user_add)
    action("list", "list users and roles", users.list_users)
    remove = action("remove", "remove a user (its tokens stop working)", users.remove)
    remove.add_argument("name")
    passwd = action("passwd", "change a password (yours unless NAME)", users.passwd)
    passwd.add_argument("name", nargs="?")
    passwd.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    role = action("role", "change a user's role", users.role)
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    revoke = action("revoke", "revoke every token of a user (yours unless NAME)", users.revoke)
    revoke.add_argument("name", nargs="?")


def _add_limit_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "limit",
        help="rate limits and concurrency caps per task type (cluster-wide, exact)",
        description="Rate limits and concurrency caps per task type, kept in the cluster's "
        "journal. One leader dispatches every task, so a rate is exact across all workers.",
    )
    action = _client_actions(p, "limit_command")
    set_ = action("set", "limit a task type (admins)", limits.set_limit)
    set_.add_argument("type", help="task type")
    set_.add_argument("--rate", type=float, metavar="R", help="starts per second, on average")
    set_.add_argument("--burst", type=int, metavar="N", help="most starts in one second [R]")
    set_.add_argument("--concurrency", type=int, metavar="N", help="most running at once")
    action("list", "list the limits", limits.list_limits)
    action("rm", "lift a task type's limit (admins)", limits.remove_limit).add_argument("type")

    p = sub.add_parser(
        "quota",
        help="fair-share weights and quotas per user",
        description="Fair-share weights and quotas per user, kept in the cluster's journal. "
        "USER * applies to every user without a quota of their own.",
    )
    action = _client_actions(p, "quota_command")
    set_ = action("set", "set a user's weight and quotas (admins)", limits.set_quota)
    set_.add_argument("user", help="user name, or '*' for everyone else")
    set_.add_argument("--weight", type=float, help="share when users compete [1]")
    set_.add_argument("--max-running", type=int, metavar="N", help="most running at once")
    set_.add_argument(
        "--max-pending", type=int, metavar="N", help="most waiting to run (more: refused, 429)"
    )
    action("list", "list weights and quotas", limits.list_quotas)
    action("rm", "remove a user's quota (admins)", limits.remove_quota).add_argument("user")


def _add_schedule_parser(sub: Any) -> None:
    p = sub.add_parser(
        "schedule",
        help="durable schedules: tasks submitted by cron or every S seconds",
        description="Durable schedules, kept in the cluster's journal: each tick submits "
        "its task once (key NAME@<tick>), even across a failover.",
    )
    action = _client_actions(p, "schedule_command")

    add = action("add", "add a schedule", schedules.add)
    add.add_argument("name", help="its name: lowercase letters, digits, . _ -")
    add.add_argument("type", help="task type to submit at each tick")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="a cron expression, e.g. '*/5 * * * *'")
    when.add_argument("--every", type=float, metavar="S", help="every S seconds")
    add.add_argument("--payload", help="JSON payload of each task")
    add.add_argument("--timezone", default="UTC", help="for --cron, e.g. Europe/Lisbon [UTC]")
    add.add_argument(
        "--overlap",
        choices=("allow", "skip", "replace"),
        default="allow",
        help="when the last fire still runs: fire anyway, skip this tick, or cancel it [allow]",
    )
    add.add_argument(
        "--catch-up",
        choices=("none", "last", "all"),
        default="none",
        help="ticks missed while the cluster was down: skip them, fire the last, or all [none]",
    )
    action("list", "list schedules with last and next tick", schedules.list_schedules)
    for name, help_text, fn in (
        ("rm", "remove a schedule", schedules.remove),
        ("pause", "pause a schedule (its ticks are skipped)", schedules.pause),
        ("resume", "resume a paused schedule from now on", schedules.resume),
    ):
        action(name, help_text, fn).add_argument("name")


def _run_user_add(args: argparse.Namespace) -> int:
    if args.data_dir is None:
        return _client_runner(users.add)(args)
    from mutirao.auth import USERS_FILE, UserStore

    password = commands.read_password(args, confirm=not args.password_stdin)
    store = UserStore(args.data_dir / USERS_FILE)
    user = store.add(args.name, password, role=args.role, replace=args.replace)
    print(
        f"user {user.name} ({user.role}) saved in {store.path}: the first orchestrator to "
        "lead a cluster with no users imports it; for a running cluster use "
        "`mutirao user add` without --data-dir"
    )
    return 0


def _run_shell(args: argparse.Namespace) -> int:
    from mutirao.client.shell import run_shell

    return run_shell(client_settings(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (ApiError, Unreachable, MutiraoError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A port in use, an unreadable token file, an unwritable data dir: say so in one line.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
