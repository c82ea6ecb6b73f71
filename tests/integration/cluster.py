"""Real local clusters for tests: orchestrator and worker processes on loopback.

Every process is started with ``python -m mutirao ...`` exactly as a user would, and is
SIGKILLed and reaped when the test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mutirao.auth import ADMIN, SECRET_FILE, SUBMITTER, USERS_FILE, TokenSigner, User, UserStore
from mutirao.client.http import Client
from mutirao.protocol import HaView

T = TypeVar("T")

HEARTBEAT_TIMEOUT = 1.5
"""Tests shorten the heartbeat timeout (default 3 s) so failure scenarios finish quickly."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, every: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            cwd=self.cwd,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: int) -> None:
        assert self.popen is not None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LocalCluster:
    root: Path
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    env_extra: dict[str, str] = field(default_factory=dict)
    backup_port: int = field(default_factory=free_port)
    backup_host: str = "127.0.0.1"
    """Another loopback address (127.0.0.2) lets the two orchestrators share a port number."""
    has_backup: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backup_url(self) -> str:
        return f"http://{self.backup_host}:{self.backup_port}"

    @property
    def urls(self) -> list[str]:
        """Every orchestrator URL, as clients and workers are configured."""
        return [self.url, self.backup_url] if self.has_backup else [self.url]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def join_token(self) -> str:
        return "test-join-token"

    @property
    def peer_token(self) -> str:
        return "test-peer-token"

    def orchestrator_env(self) -> dict[str, str]:
        """The environment of an orchestrator: a worker's, plus the peer token (which
        ``env_extra`` may override)."""
        return {"MUTIRAO_AUTH_PEER_TOKEN": self.peer_token, **self._env()}

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "MUTIRAO_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "MUTIRAO_HEARTBEAT_INTERVAL": "0.25",
                "MUTIRAO_AUTH_JOIN_TOKEN": self.join_token,
                "MUTIRAO_LOG_DIR": str(self.root / "logs"),
                "MUTIRAO_HA_LEASE_DIR": str(self.root / "lease"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_extra)
        return env

    def _spawn(self, name: str, args: list[str]) -> Proc:
        env = self.orchestrator_env() if args[0] in ("orchestrator", "backup") else self._env()
        proc = Proc(name, [sys.executable, "-m", "mutirao", *args], self.root / f"{name}.out", env)
        self.procs.append(proc.start())
        return proc

    def start_orchestrator(self, *extra: str) -> Proc:
        return self._spawn(
            "orchestrator",
            ["orchestrator", "--port", str(self.port), "--data-dir", str(self.data_dir), *extra],
        )

    def start_backup(self, *extra: str) -> Proc:
        """A hot standby on its own port and data dir, sharing the lease dir."""
        self.has_backup = True
        return self._spawn(
            "backup",
            [
                "backup",
                "--host", self.backup_host,
                "--port", str(self.backup_port),
                "--data-dir", str(self.root / "backup-data"),
                "--url", self.url,
                *extra,
            ],
        )  # fmt: skip

    def start_worker(
        self, wid: str, *, slots: int = 4, crash: bool = True, extra: tuple[str, ...] = ()
    ) -> Proc:
        urls = ",".join(self.urls)
        args = ["worker", "--id", wid, "--url", urls, "--slots", str(slots), *extra]
        if crash:
            args.append("--allow-crash")
        return self._spawn(f"worker-{wid}", args)

    def token(self, user: str = "admin", admin: bool = True) -> str:
        """A token minted with the cluster's first secret (which exists once the first
        orchestrator started), trusted on its claims like the operator's."""
        secret = (self.data_dir / SECRET_FILE).read_text().strip()
        role = ADMIN if admin else SUBMITTER
        return TokenSigner(secret).mint(User(user, role), time.time(), 3600)

    def bootstrap_user(self, name: str, password: str, *, admin: bool = False) -> None:
        """A user in the bootstrap file, imported by the first leader (before start)."""
        role = ADMIN if admin else SUBMITTER
        UserStore(self.data_dir / USERS_FILE).add(name, password, role=role)

    async def add_user(self, name: str, password: str, *, role: str = SUBMITTER) -> None:
        """A user added to the running cluster over its API, as an admin would."""
        async with self.client() as client:
            await client.add_user(name, password, role)

    def client(self, token: str | None = None, **kw: Any) -> Client:
        return Client(self.urls, self.token() if token is None else token, **kw)

    def proc(self, name: str) -> Proc:
        """The process last started as ``name`` (orchestrator, backup, worker-W1...)."""
        return [p for p in self.procs if p.name == name][-1]

    async def start_ha(self, *workers: str) -> None:
        """The active, then its standby once the active is ready, then the workers; returns
        once the standby is in sync and the workers registered."""
        self.start_orchestrator()
        await self.wait_ready()
        self.start_backup()
        async with self.client() as client:
            await standby_synced(client, "backup")
        for wid in workers:
            self.start_worker(wid)
        await self.wait_workers(*workers)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        import aiohttp

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(self.url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout, what=f"orchestrator ready at {self.url}")

    async def wait_workers(self, *ids: str, timeout: float = 20.0) -> None:
        async with self.client() as client:

            async def registered() -> bool:
                alive = {w["id"] for w in await client.workers() if w["state"] == "alive"}
                return alive >= set(ids)

            await eventually(registered, timeout=timeout, what=f"workers {ids} alive")

    async def start(self, *workers: str, slots: int = 4, extra: tuple[str, ...] = ()) -> None:
        """Orchestrator plus workers (``extra``: flags for each), all registered."""
        self.start_orchestrator()
        await self.wait_ready()
        for wid in workers:
            self.start_worker(wid, slots=slots, extra=extra)
        await self.wait_workers(*workers)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.output()[-4000:]}" for p in self.procs)


async def standby_synced(client: Client, node: str) -> None:
    """Wait until the active names ``node`` as a standby in sync (which may take over)."""

    async def synced() -> bool:
        info = await client.cluster()
        return any(s["node"] == node and s["synced"] for s in info["standbys"])

    await eventually(synced, timeout=20, what=f"standby {node} in sync")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def two_free_ports() -> int:
    """A free port P with P + 1 free too (``mutirao up`` puts the standby there)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@dataclass
class UpCluster:
    """A whole cluster as ``mutirao up`` runs it: its own supervisor restarts children (from
    a warm spare for workers). ``info`` is its ``cluster.json`` (urls, user, token)."""

    root: Path
    env: dict[str, str]
    port: int = field(default_factory=two_free_ports)
    proc: Proc | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    async def start(self, *args: str, timeout: float = 30) -> None:
        """``mutirao up ARGS``, until its banner is out (every worker registered)."""
        argv = [sys.executable, "-m", "mutirao", "up", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--log-dir", str(self.root / "logs"),
                *args]  # fmt: skip
        self.proc = Proc("up", argv, self.root / "up.out", self.env).start()
        banner = self.data_dir / "cluster.json"

        async def up() -> bool:
            assert self.proc is not None
            assert self.proc.popen is not None
            assert self.proc.popen.poll() is None, self.proc.output()[-3000:]
            return banner.exists() and "Mutirão is up" in self.proc.output()

        await eventually(up, timeout=timeout, what="`mutirao up` banner", every=0.05)
        self.info = json.loads(banner.read_text())

    def client(self, **kw: Any) -> Client:
        return Client(self.info["urls"], self.info["token"], ca=self.info.get("ca", ""), **kw)

    def proc_output(self) -> str:
        """What ``mutirao up`` and its children printed (stdout and stderr)."""
        return self.proc.output() if self.proc is not None else ""

    def children(self, marker: str = "") -> list[int]:
        """Children of ``mutirao up`` whose command line has ``marker`` as an argument."""
        assert self.proc is not None
        found = []
        for pid in children_of(self.proc.pid):
            with contextlib.suppress(FileNotFoundError):
                if not marker or marker in cmdline(pid):
                    found.append(pid)
        return found

    def stop(self) -> None:
        """Kill the whole process group, whatever state it is in."""
        if self.proc is not None and self.proc.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.popen.wait(timeout=10)


async def ha_view(url: str) -> HaView | None:
    """``GET /v1/ha`` of one orchestrator; None if it does not answer within a second."""
    import aiohttp

    try:
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url + "/v1/ha") as r:
            view: HaView = await r.json()
            return view
    except (aiohttp.ClientError, TimeoutError):
        return None


async def is_active(url: str) -> bool:
    view = await ha_view(url)
    return view is not None and view["role"] == "active"


SIGKILL = signal.SIGKILL
