"""All configuration in one place: nested dataclasses with typed, documented defaults.

Values come from defaults, then ``MUTIRAO_*`` environment variables, then CLI flags. The
environment is read only by :func:`from_env`, which the CLI calls; nothing here reads it at
import time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class HeartbeatSettings:
    interval: float = 1.0
    """Seconds between two heartbeats sent by a worker."""
    timeout: float = 3.0
    """Seconds of silence after which the orchestrator declares a worker dead."""


@dataclass
class JournalSettings:
    fsync: bool = True
    """Flush every journal group to disk before acknowledging it (durability)."""
    checkpoint_interval: float = 30.0
    """Seconds between checkpoints (snapshot + journal compaction)."""
    checkpoint_min_records: int = 10_000
    """Write a checkpoint early once the journal holds this many records, and at least half
    as many bytes as the last checkpoint (see ``Journal.outgrown``)."""


@dataclass
class AuthSettings:
    token_ttl: float = 900.0
    """Seconds an access token (from ``/v1/login`` or ``/v1/refresh``) stays valid."""
    refresh_ttl: float = 12 * 3600.0
    """Seconds a login's refresh token buys new access tokens (then: log in again)."""
    join_token: str = ""
    """Shared secret workers present to register; it opens the worker socket and nothing
    else. If empty, the journal's (which the first leader took from a generated file: the
    lease dir's with the file lease)."""
    peer_token: str = ""
    """Secret the orchestrators present to each other (replication, which carries every
    secret and password hash): never given to workers. If empty with the ``file`` lease, a
    generated one in the lease dir; the ``peer`` and ``kubernetes`` backends need it set,
    the same on every orchestrator."""
    operator_token: str = ""
    """A static bearer token for the Kubernetes operator: it acts as ``operator_user``
    with the ``submitter`` role (its own Tasks, nothing else), so the operator never needs
    the token-signing key. Empty: no such token."""
    operator_user: str = "mutirao-operator"
    """Who ``operator_token`` authenticates as (the owner of the Tasks' tasks)."""
    token_secret: str = ""
    """Key that signs login tokens. If empty, the journal's (which the first leader
    generated). Set it (from a Kubernetes Secret, say) to share it with a client that mints
    its own tokens, the operator; a leader journals a changed one (rotation)."""


@dataclass
class LimitSettings:
    max_payload_bytes: int = 1024 * 1024
    """Largest JSON payload accepted for one task."""
    max_request_bytes: int = 64 * 1024 * 1024
    """Largest HTTP request body accepted (a batch of tasks)."""
    max_batch: int = 10_000
    """Most tasks accepted in one submission request."""
    max_wait: float = 60.0
    """Longest long-poll a client may ask for, in seconds."""
    header_timeout: float = 10.0
    """Seconds a client may take to send a request's headers (from its first byte, or from
    the connection opening); then the connection is closed."""
    body_timeout: float = 30.0
    """Seconds a client may take to send a request body (then 408)."""
    connections_per_address: int = 512
    """Open connections one client address may hold; the next is refused with 429."""


@dataclass
class TlsSettings:
    cert: str = ""
    """PEM certificate (chain) this node serves HTTPS with, and presents as a client to
    other nodes; empty: plain HTTP. Its subject's OU names the role (``orchestrator`` or
    ``worker``) that ``client_auth`` checks."""
    key: str = ""
    """PEM private key of ``cert`` (if not in the same file)."""
    ca: str = ""
    """PEM bundle of the authorities that signed the servers' (and with ``client_auth``
    the nodes') certificates; empty: the system's."""
    client_auth: bool = False
    """Mutual TLS: the worker socket, replication and a worker's switch endpoint need a
    client certificate from ``ca`` with the right role (orchestrators and workers)."""
    reload_interval: float = 30.0
    """Seconds between two looks at the files above: renewed ones (cert-manager, the
    chart's hook Job, a copy) are loaded for new connections without a restart."""


@dataclass
class TaskDefaults:
    max_attempts: int = 3
    """Attempts before a task fails for good (worker deaths count as attempts)."""
    timeout: float = 300.0
    """Seconds an attempt may run before the worker abandons it as failed."""
    priority: int = 0
    """Higher runs first; FIFO within one priority."""
    retention: float = 24 * 3600.0
    """Seconds a finished task, its result included, stays in the orchestrator's memory and
    checkpoints; then it is forgotten (and its idempotency key with it), as Celery's
    ``result_expires``. 0 forgets finished tasks as soon as possible."""
    retry_delay: float = 0.0
    """Seconds before a failed task's second attempt (0: at once); a task's ``retry``
    overrides these four. Lost workers' attempts are always retried at once."""
    retry_backoff: float = 2.0
    """Factor by which the delay grows with each attempt."""
    retry_max_delay: float = 300.0
    """Longest delay between attempts, in seconds."""
    retry_jitter: float = 0.0
    """Fraction of the delay added or taken at random (0.1: +/-10%), so that tasks failing
    together do not all come back together."""
    refuse_unknown_types: bool = False
    """Refuse (422) tasks of a type no worker has announced yet. Off: they are queued,
    pending, until a worker that runs the type joins (scale from zero, rolling deploys)."""


@dataclass
class LogSettings:
    level: str = "INFO"
    """Threshold for stderr and the log file."""
    format: str = "text"
    """``text`` or ``json``."""
    dir: Path = Path("logs")
    """Directory for rotating log files ``<component>-<id>.log``."""


@dataclass
class HaSettings:
    backend: str = "file"
    """Lease backend: ``file`` (one machine, shared ``lease_dir``), ``peer`` (no shared disk)
    or ``kubernetes`` (a coordination.k8s.io Lease)."""
    lease_dir: Path = Path("mutirao-lease")
    """Directory the ``file`` backend shares between the orchestrators of one machine."""
    peers: list[str] = field(default_factory=list)
    """URLs of the other orchestrators (``peer`` backend; also where a standby looks)."""
    url: str = ""
    """URL others reach this orchestrator at; defaults to ``http://<host>:<port>``."""
    peer_port: int = 0
    """Port of a second listener that serves replication, and the API port then does not,
    so a firewall or NetworkPolicy can let only orchestrators reach it. The same on every
    orchestrator of a cluster (a standby reaches it on the leader's host). 0: replication
    is served on the API port."""
    lease_duration: float = 5.0
    """Seconds a lease lasts without renewal; a hung leader is replaced after this."""
    renew_interval: float = 1.0
    """Seconds between two renewals by the leader."""
    retry_interval: float = 0.1
    """Seconds between two attempts of a standby to take the lease."""
    step_down_margin: float = 1.0
    """A leader that could not renew stops acting this long before its lease expires."""
    namespace: str = "default"
    """Namespace of the Lease (``kubernetes`` backend)."""
    lease_name: str = "mutirao-leader"
    """Name of the coordination.k8s.io Lease the orchestrators share (``kubernetes`` backend)."""


@dataclass
class WorkerSettings:
    id: str = ""
    """Worker id; defaults to ``<hostname>-<pid>``. A restart with the same id replaces it."""
    port: int = 0
    """Port of the worker's own HTTP server (health, status); 0 picks a free one."""
    slots: int = 4
    """Attempts this worker runs at once; its load is running / slots."""
    prefetch: int = 16
    """Attempts it takes beyond its slots, each started as soon as a slot frees, so that
    short tasks do not wait a round trip to the orchestrator between them. They count in
    its load. 0 for long tasks, where one held here could have started on an idle worker
    meanwhile."""
    tasks: list[str] = field(default_factory=list)
    """Python modules to import for ``@mutirao.task`` handlers, besides the built-ins."""
    allow_crash: bool = False
    """Obey ``"crash"`` in payloads by exiting abruptly (for failure drills only)."""
    pool: str = "processes"
    """Where blocking (non-async) handlers run: ``processes``, one per slot, killed and
    replaced when a time limit or a cancel must stop one; or ``threads``, cheaper, but a
    thread past its time limit runs on to its end."""
    reconnect_max: float = 2.0
    """Longest pause between two attempts to reach an orchestrator, in seconds."""
    queues: list[str] = field(default_factory=lambda: ["default"])
    """Queues whose tasks this worker takes (a task's ``queue``; ``default`` if it has none)."""
    resources: list[str] = field(default_factory=list)
    """What the worker offers tasks, ``NAME=QUANTITY`` (``gpu=1``, ``memory=16Gi``); ``cpu``
    defaults to the slots."""
    drain_timeout: float = 25.0
    """On SIGTERM, seconds the worker keeps running its attempts to finish them before it
    hands the rest back and exits (keep it below Kubernetes'
    ``terminationGracePeriodSeconds``)."""


@dataclass
class TracingSettings:
    exporter: str = ""
    """OpenTelemetry traces of tasks (see :mod:`mutirao.tracing`): ``otlp`` (OTLP over
    HTTP), ``console`` (JSON on stdout), or empty: off."""
    endpoint: str = ""
    """Where ``otlp`` sends spans; empty: the OTEL_EXPORTER_OTLP_* variables, else
    http://localhost:4318/v1/traces."""


@dataclass
class Settings:
    """Settings shared by every Mutirão process."""

    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:7000"])
    """Orchestrator URLs (active first); clients and workers try them in turn."""
    host: str = "127.0.0.1"
    """Interface the HTTP server of this process binds."""
    port: int = 7000
    """Port of the orchestrator's HTTP server (workers use their own ``--port``)."""
    data_dir: Path = Path("mutirao-data")
    """Orchestrator state: journal, checkpoint, users, secrets."""
    node_id: str = "orchestrator"
    """Name of this process in logs and the cluster view."""
    token: str = ""
    """Bearer token a client presents (from ``mutirao login`` or ``MUTIRAO_TOKEN``)."""
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    tasks: TaskDefaults = field(default_factory=TaskDefaults)
    log: LogSettings = field(default_factory=LogSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    ha: HaSettings = field(default_factory=HaSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @property
    def advertised_url(self) -> str:
        scheme = "https" if self.tls.cert else "http"
        return self.ha.url or f"{scheme}://{self.host}:{self.port}"


def validate(settings: Settings) -> Settings:
    """Reject combinations that would break a guarantee rather than a single value."""
    ha, hb = settings.ha, settings.heartbeat
    if ha.step_down_margin < 0.2:
        raise SettingsError("ha.step_down_margin must be at least 0.2 s")
    if ha.renew_interval + ha.step_down_margin >= ha.lease_duration:
        raise SettingsError(
            "ha.renew_interval + ha.step_down_margin must be below ha.lease_duration "
            f"({ha.renew_interval} + {ha.step_down_margin} >= {ha.lease_duration}): the "
            "leader would step down before it ever renews"
        )
    if not 0 <= settings.tasks.retention < math.inf:
        raise SettingsError(f"tasks.retention must be >= 0 s, not {settings.tasks.retention}")
    tls = settings.tls
    if tls.client_auth and not (tls.cert and tls.ca):
        raise SettingsError("tls.client_auth needs tls.cert and tls.ca (the nodes' authority)")
    if hb.interval >= hb.timeout:
        raise SettingsError(
            f"heartbeat.interval ({hb.interval}) must be below heartbeat.timeout ({hb.timeout})"
        )
    return settings


def _env_name(path: str) -> str:
    return "MUTIRAO_" + path.replace(".", "_").upper()


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, Path):
        return Path(value)
    if isinstance(current, list):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _overlay(obj: Any, env: Mapping[str, str], prefix: str) -> None:
    for f in dataclasses.fields(obj):
        path = f"{prefix}{f.name}"
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            _overlay(current, env, path + ".")
            continue
        name = "MUTIRAO_URL" if path == "urls" else _env_name(path)
        if name in env:
            try:
                setattr(obj, f.name, _coerce(env[name], current))
            except ValueError as exc:
                raise SettingsError(f"{name}={env[name]!r}: {exc}") from None


class SettingsError(ValueError):
    """A configuration value could not be understood."""


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults overlaid with ``MUTIRAO_*`` variables (``MUTIRAO_HEARTBEAT_TIMEOUT=5`` ...)."""
    settings = Settings()
    _overlay(settings, os.environ if env is None else env, "")
    return settings
