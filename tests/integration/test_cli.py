"""The real ``mutirao`` command, run as a subprocess: help everywhere, the user/login/submit
workflow with saved credentials, clean one-line errors, and ``mutirao up`` stopping cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from mutirao.auth import SECRET_FILE
from tests.integration.cluster import LocalCluster, UpCluster, eventually, free_port

MUTIRAO = [sys.executable, "-m", "mutirao"]


@dataclass(repr=False)
class Run:
    argv: list[str]
    code: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"$ mutirao {' '.join(self.argv)}\nexit {self.code}\n{self.out}\n{self.err}"


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any ``MUTIRAO_*`` leaking in, and a private config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUTIRAO_")}
    env["MUTIRAO_CONFIG_DIR"] = str(tmp_path / "config")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def mutirao(
    *argv: str,
    env: Mapping[str, str],
    cwd: Path,
    stdin: str | None = None,
    timeout: float = 30.0,
) -> Run:
    """Run ``python -m mutirao ARGV`` to completion (at most ``timeout`` seconds)."""
    proc = await asyncio.create_subprocess_exec(
        *MUTIRAO,
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(None if stdin is None else stdin.encode())
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"mutirao {' '.join(argv)} ran longer than {timeout}s") from None
    assert proc.returncode is not None
    return Run(list(argv), proc.returncode, out.decode(), err.decode())


@dataclass
class Cli:
    """``mutirao`` bound to one environment and working directory."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *argv: str, stdin: str | None = None) -> Run:
        return await mutirao(*argv, env=self.env, cwd=self.cwd, stdin=stdin)


def assert_clean_error(run: Run, *words: str) -> None:
    """Failed with a one-line ``error: ...`` on stderr naming ``words``, and no traceback."""
    assert run.code != 0, run
    assert run.err.startswith("error:"), run
    assert len(run.err.strip().splitlines()) == 1, run
    assert "Traceback" not in run.err, run
    assert "Traceback" not in run.out, run
    for word in words:
        assert word in run.err, f"{word!r} not in stderr:\n{run}"


# -- help ------------------------------------------------------------------------------------

_COMMANDS = [
    [],
    ["orchestrator"],
    ["backup"],
    ["worker"],
    ["up"],
    ["user"],
    ["user", "add"],
    ["user", "list"],
    ["user", "remove"],
    ["user", "passwd"],
    ["user", "role"],
    ["user", "revoke"],
    ["logout"],
    ["login"],
    ["submit"],
    ["status"],
    ["result"],
    ["tasks"],
    ["workers"],
    ["cancel"],
    ["graph"],
    ["schedule"],
    ["schedule", "add"],
    ["schedule", "list"],
    ["schedule", "rm"],
    ["schedule", "pause"],
    ["schedule", "resume"],
    ["cluster"],
    ["client"],
    ["limit"],
    ["limit", "set"],
    ["limit", "list"],
    ["limit", "rm"],
    ["quota"],
    ["quota", "set"],
    ["quota", "list"],
    ["quota", "rm"],
]


async def test_help_for_every_command(tmp_path: Path) -> None:
    cli = Cli(cli_env(tmp_path), tmp_path)
    runs = await asyncio.gather(*(cli(*command, "--help") for command in _COMMANDS))
    for command, run in zip(_COMMANDS, runs, strict=True):
        assert run.code == 0, run
        assert run.out.startswith("usage: mutirao " + " ".join(command)), run
        assert run.err == "", run
        assert "SETTING:" not in run.out, run  # --port PORT, not the setting's inner name
    top = runs[0].out
    for command in _COMMANDS[1:]:
        assert command[0] in top, f"{command[0]} missing from the top-level help"


async def test_login_without_a_terminal_says_what_to_give(tmp_path: Path) -> None:
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=f"http://127.0.0.1:{free_port()}"), tmp_path)
    assert_clean_error(await cli("login"), "no terminal", "--user NAME")
    assert_clean_error(await cli("login", "--user", "ana"), "no terminal", "--password-stdin")


async def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    run = await Cli(cli_env(tmp_path), tmp_path)()
    assert run.code == 2, run
    assert "usage: mutirao" in run.err
    assert "Traceback" not in run.err


# -- the client workflow ---------------------------------------------------------------------


async def _add_user_and_login(cli: Cli, cluster: LocalCluster) -> None:
    """An admin adds carla to the running cluster; carla logs in."""
    admin = ("--url", cluster.url, "--token", cluster.token())
    added = await cli("user", "add", "carla", "--password-stdin", *admin, stdin="carla-secret\n")
    assert added.code == 0, added
    assert "user carla added (submitter)" in added.err
    saved_path = Path(cli.env["MUTIRAO_CONFIG_DIR"]) / "credentials.json"

    login = ("login", "--user", "carla", "--password-stdin", "--url", cluster.url)
    wrong = await cli(*login, stdin="not-her-password\n")
    assert_clean_error(wrong, "wrong user name or password", "401")
    assert not saved_path.exists()

    right = await cli(*login, stdin="carla-secret\n")
    assert right.code == 0, right
    saved = json.loads(saved_path.read_text())
    tokens = {"token": saved["token"], "refresh_token": saved["refresh_token"]}
    assert saved == {"urls": [cluster.url], "user": "carla", **tokens}
    assert saved["token"]
    assert saved["refresh_token"]
    assert stat.S_IMODE(saved_path.stat().st_mode) == 0o600


async def test_user_login_submit_and_inspect(cluster: LocalCluster, tmp_path: Path) -> None:
    await cluster.start("W1")
    cli = Cli(cli_env(tmp_path), tmp_path)
    await _add_user_and_login(cli, cluster)

    # From here on: no --url and no --token, only what `login` saved.
    one = await cli("submit", "echo", "--payload", '"x"', "--wait")
    assert one.code == 0, one
    assert one.out.strip() == '"x"', one

    many = await cli("submit", "echo", "--payload", "[1, 2]", "--count", "50", "--wait")
    assert many.code == 0, many
    assert "50 succeeded" in many.out, many

    submitted = await cli("submit", "sum", "--payload", "[1, 2, 3.5]")
    assert submitted.code == 0, submitted
    task_id = submitted.out.strip()
    assert task_id.isalnum(), submitted  # the id alone on stdout, for scripts

    result = await cli("result", task_id, "--wait", "--timeout", "10", "--json")
    assert result.code == 0, result
    view = json.loads(result.out)
    assert (view["id"], view["state"], view["result"]) == (task_id, "succeeded", 6.5)
    assert view["owner"] == "carla"

    status = await cli("status", task_id)
    assert status.code == 0, status
    for text in (task_id, "succeeded", "attempt 1 on W1: succeeded"):
        assert text in status.out, status

    tasks = await cli("tasks", "--limit", "5")
    assert tasks.code == 0, tasks
    assert tasks.out.startswith("ID"), tasks
    assert task_id in tasks.out, tasks
    assert len(tasks.out.strip().splitlines()) == 1 + 5
    listed = await cli("tasks", "--json", "--limit", "1000")
    assert len(json.loads(listed.out)) == 1 + 50 + 1

    # carla is not an admin: the workers and cluster views are refused with a clean error.
    assert_clean_error(await cli("workers"), "403")
    workers = await cli("workers", "--token", cluster.token())
    assert workers.code == 0, workers
    assert workers.out.startswith("WORKER"), workers
    assert "W1" in workers.out, workers
    assert "alive" in workers.out, workers
    assert_clean_error(await cli("cluster"), "403")
    admin = await cli("cluster", "--token", cluster.token())
    assert admin.code == 0, admin
    assert "W1" in admin.out, admin
    assert "succeeded=52" in admin.out, admin


async def test_users_are_managed_on_the_running_cluster(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`mutirao user add|list|passwd|role|revoke|remove` and `logout` against the active
    orchestrator: each takes effect at once, on logins and on tokens already out. The admin
    here holds the token secret instead of a login (as on an orchestrator pod)."""
    await cluster.start("W1")
    # As on an orchestrator pod: no login, but the cluster's token secret in the environment.
    secret = (cluster.data_dir / SECRET_FILE).read_text().strip()
    admin = Cli(
        cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_AUTH_TOKEN_SECRET=secret), tmp_path
    )
    dana = Cli(cli_env(tmp_path / "dana", MUTIRAO_URL=cluster.url), tmp_path)
    login = ("login", "--user", "dana", "--password-stdin")

    added = await admin("user", "add", "dana", "--admin", "--password-stdin", stdin="dana-pw-1\n")
    assert added.code == 0, added
    assert_clean_error(await admin("user", "role", "dana", "viewer"), "only admin", "409")
    root = await admin("user", "add", "root", "--role", "admin", "--password-stdin", stdin="r" * 9)
    assert root.code == 0, root
    assert_clean_error(
        await admin("user", "add", "dana", "--password-stdin", stdin="dana-pw-1\n"),
        "already exists",
        "409",
    )
    assert_clean_error(
        await admin("user", "add", "eve", "--password-stdin", stdin="short\n"),
        "at least 8 characters",
        "field password",
    )
    listed = await admin("user", "list", "--json")
    assert [(u["name"], u["role"]) for u in json.loads(listed.out)] == [
        ("dana", "admin"),
        ("root", "admin"),
    ], listed

    assert (await dana(*login, stdin="dana-pw-1\n")).code == 0
    assert (await dana("cluster")).code == 0, "dana is an admin"
    demoted = await admin("user", "role", "dana", "viewer")
    assert demoted.code == 0, demoted
    assert_clean_error(await dana("cluster"), "403")  # her token is unchanged: her role is not
    assert_clean_error(await dana("submit", "echo"), "viewer", "403")

    changed = await dana("user", "passwd", "--password-stdin", stdin="dana-pw-2\n")
    assert changed.code == 0, changed
    assert_clean_error(await dana("tasks"), "revoked", "401")  # the password change signs out
    assert_clean_error(await dana(*login, stdin="dana-pw-1\n"), "wrong user name or password")
    assert (await dana(*login, stdin="dana-pw-2\n")).code == 0
    assert (await dana("tasks")).code == 0

    out = await dana("logout")
    assert out.code == 0, out
    assert not (tmp_path / "dana" / "config" / "credentials.json").exists()
    assert (await dana(*login, stdin="dana-pw-2\n")).code == 0
    revoked = await admin("user", "revoke", "dana")
    assert revoked.code == 0, revoked
    assert_clean_error(await dana("tasks"), "revoked", "401")

    assert (await dana(*login, stdin="dana-pw-2\n")).code == 0
    removed = await admin("user", "remove", "dana")
    assert removed.code == 0, removed
    assert_clean_error(await dana("tasks"), "no longer exists", "401")
    assert_clean_error(await dana(*login, stdin="dana-pw-2\n"), "wrong user name or password")
    assert_clean_error(await admin("user", "remove", "dana"), "no user 'dana'", "404")
    assert [u["name"] for u in json.loads((await admin("user", "list", "--json")).out)] == ["root"]


async def test_the_bootstrap_users_file_is_imported_by_the_first_leader(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`user add --data-dir` before the first start: the first leader imports the file into
    the journal (and renames it); adding to the file of a running cluster says why not."""
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url), tmp_path)
    data = str(cluster.data_dir)
    first = await cli(
        "user", "add", "root", "--admin", "--password-stdin", "--data-dir", data,
        stdin="root-password\n",
    )  # fmt: skip
    assert first.code == 0, first
    assert "the first orchestrator to lead a cluster with no users imports it" in first.out
    await cluster.start("W1")
    imported = cluster.data_dir / "users.json.imported"

    async def renamed() -> bool:
        return imported.exists()

    await eventually(renamed, timeout=10, what=f"{imported} after the import")
    assert not (cluster.data_dir / "users.json").exists()
    logged_in = await cli("login", "--user", "root", "--password-stdin", stdin="root-password\n")
    assert logged_in.code == 0, logged_in
    listed = await cli("user", "list")
    assert listed.out.split() == ["USER", "ROLE", "root", "admin"], listed


# -- errors ----------------------------------------------------------------------------------


async def test_errors_are_one_clean_line(cluster: LocalCluster, tmp_path: Path) -> None:
    # Nothing listens on this port. The client retries unreachable URLs for its whole budget
    # (Client.retry_for, 10 s, not configurable from the CLI), so run it in the background.
    dead_url = f"http://127.0.0.1:{free_port()}"
    unreachable = asyncio.ensure_future(
        Cli(cli_env(tmp_path), tmp_path)("tasks", "--url", dead_url, "--token", "t")
    )
    try:
        await cluster.start("W1")
        cli = Cli(
            cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path
        )

        bad = await cli("submit", "echo", "--resources", "gpu=lots")
        assert bad.code == 1, bad
        assert_clean_error(bad, "lots", "field resources.gpu", "422")
        assert_clean_error(await cli("submit", "echo", "--resources", "gpu"), "NAME=QUANTITY")
        assert_clean_error(await cli("submit", "echo", "--payload", "{oops"), "--payload")
        assert_clean_error(await cli("submit", "echo", "--timeout", "-1"), "field timeout")
        assert_clean_error(await cli("submit", "echo", "--count", "0"), "--count")
        assert_clean_error(await cli("tasks", "--state", "bogus"), "field state")
        missing = await cli("status", "0" * 32)
        assert missing.code == 1, missing
        assert_clean_error(missing, "404")

        failed = await cli(
            "submit", "fail", "--payload", '"on purpose"', "--max-attempts", "1", "--wait"
        )
        assert failed.code == 1, failed
        assert failed.err.startswith("task "), failed
        assert " failed: failed after 1 attempts" in failed.err, failed
        assert "RuntimeError: on purpose" in failed.err, failed
        assert "Traceback" not in failed.err, failed
        failed_default = await cli("submit", "fail", "--wait")
        assert failed_default.code == 1, failed_default

        no_token = Cli({**cli.env, "MUTIRAO_TOKEN": ""}, tmp_path)
        assert_clean_error(await no_token("tasks"), "mutirao login", "401")

        worker = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url), tmp_path)
        assert_clean_error(
            await worker("worker", "--log-dir", str(tmp_path / "logs")), "join token"
        )

        dead = await unreachable
    finally:
        if not unreachable.done():
            unreachable.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await unreachable
    # Said while it retries, then one line with what to check.
    assert dead.code == 1, dead
    *retrying, error = dead.err.strip().splitlines()
    assert retrying, dead
    assert all(line == f"retrying {dead_url}: Connection refused…" for line in retrying), dead
    assert error.startswith(f"error: no orchestrator answered within 10 s ({dead_url}"), dead
    assert "Is the cluster running (`mutirao up`)? Does MUTIRAO_URL" in error, dead
    assert "ssl:default" not in dead.err, dead
    assert "Traceback" not in dead.err, dead


def assert_last_line_error(run: Run, *words: str) -> None:
    """Like :func:`assert_clean_error`, for servers that may log a few lines first."""
    assert run.code == 1, run
    assert run.err.strip().splitlines()[-1].startswith("error:"), run
    assert "Traceback" not in run.err, run
    for word in words:
        assert word in run.err, f"{word!r} not in stderr:\n{run}"


async def test_server_and_user_errors_are_clean(tmp_path: Path) -> None:
    cli = Cli(cli_env(tmp_path, MUTIRAO_LOG_DIR=str(tmp_path / "logs")), tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    under_file = str(tmp_path / "a-file" / "data")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        runs = await asyncio.gather(
            cli("orchestrator", "--port", port, "--data-dir", str(tmp_path / "d1")),
            cli("orchestrator", "--port", "0", "--data-dir", under_file),
            cli("orchestrator", "--port", "0", "--log-level", "LOUD"),
            cli("worker", "--port", port, "--join-token", "j", "--url", "http://127.0.0.1:9"),
            cli("worker", "--join-token-file", str(tmp_path / "missing.token")),
            cli("worker", "--spare", "--join-token", "j", stdin="W1 not-a-port\n"),
            cli("worker", "--spare", "--join-token", "j", stdin=""),
            cli(
                "user",
                "add",
                "dora",
                "--password-stdin",
                "--data-dir",
                under_file,
                stdin="long-enough\n",
            ),
        )
    busy_orchestrator, bad_dir, bad_level, busy_worker, no_token_file, *spares, user_bad_dir = runs
    assert_clean_error(spares[0], "--spare expects 'ID [PORT]'", "W1 not-a-port")
    assert (spares[1].code, spares[1].err) == (0, ""), spares[1]  # unused: the supervisor left
    assert_last_line_error(busy_orchestrator, "address already in use")
    assert_last_line_error(bad_dir, "Not a directory")
    assert_clean_error(bad_level, "unknown log level 'LOUD'")
    assert_last_line_error(busy_worker, "address already in use")
    assert_clean_error(no_token_file, "missing.token")
    assert_clean_error(user_bad_dir, "Not a directory")

    data = str(tmp_path / "d2")
    short = await cli("user", "add", "dora", "--password-stdin", "--data-dir", data, stdin="x\n")
    assert_clean_error(short, "at least 8 characters")
    added = await cli(
        "user", "add", "dora", "--password-stdin", "--data-dir", data, stdin="long-enough\n"
    )
    assert added.code == 0, added
    again = await cli(
        "user", "add", "dora", "--password-stdin", "--data-dir", data, stdin="long-enough\n"
    )
    assert_clean_error(again, "already exists")
    bad_name = await cli(
        "user", "add", "no spaces", "--password-stdin", "--data-dir", data, stdin="long-enough\n"
    )
    assert_clean_error(bad_name, "user name")


# -- mutirao up ------------------------------------------------------------------------------


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _found(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


_PROC_CHILDREN = pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="reads /proc children"
)


@_PROC_CHILDREN
async def test_up_runs_a_cluster_and_stops_on_sigterm(tmp_path: Path) -> None:
    up = UpCluster(tmp_path, cli_env(tmp_path))
    try:
        await up.start("--workers", "2")
        info = up.info
        assert info["urls"][0] == f"http://127.0.0.1:{up.port}", info
        assert info["user"] == "dev"
        assert f"user 'dev', password {info['password']!r}" in up.proc_output()

        async with up.client() as client:
            task = await client.submit("echo", "via up")
            view = await client.wait(task["id"], timeout=10)
            assert view["state"] == "succeeded"
            assert view["result"] == "via up"
            workers = await client.workers()
        assert sorted(w["id"] for w in workers) == ["W1", "W2"]
        worker_urls = [w["url"] for w in workers]
        children = up.children()
        # Orchestrators, workers and the one warm spare.
        assert len(children) == len(info["urls"]) + 2 + 1, children
        assert len(up.children("--spare")) == 1, children

        assert up.proc is not None
        assert up.proc.popen is not None
        up.proc.signal(signal.SIGTERM)
        code = up.proc.popen.wait(timeout=15)
        output = up.proc_output()
        assert code == 0, output[-3000:]
        assert f"stopping {len(children)} process(es)" in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        survivors = [pid for pid in children if _exists(pid)]
        assert not survivors, f"children {survivors} outlived `mutirao up`"
        for where in [*info["urls"], *worker_urls]:
            assert not _listening(where), f"{where} still accepts connections"
        # The active orchestrator stopped gracefully: its final checkpoint is on disk.
        assert _found(up.data_dir, "state_checkpoint.json")
        assert _found(tmp_path / "logs", "orchestrator-*.log")
    finally:
        up.stop()  # whatever happened, nothing of this session may survive the test


@_PROC_CHILDREN
async def test_up_replaces_a_killed_worker_from_a_warm_spare(tmp_path: Path) -> None:
    """SIGKILL a worker of `mutirao up`: the warm spare (interpreter started, modules loaded)
    becomes it under the same id, a new spare is started, and work carries on."""
    up = UpCluster(tmp_path, cli_env(tmp_path))
    try:
        await up.start("--workers", "1", "--no-backup", "--worker-port", "0")
        [spare] = up.children("--spare")
        [w1] = up.children("W1")
        async with up.client() as client:
            [before] = await client.workers()
            os.kill(w1, signal.SIGKILL)

            async def replaced() -> bool:
                workers = await client.workers()
                return any(w["url"] != before["url"] and w["state"] == "alive" for w in workers)

            await eventually(replaced, timeout=10, what="W1 back under its id")
            [after] = await client.workers()
            assert after["id"] == "W1"
            output = up.proc_output()
            assert "worker W1 exited with code -9; a warm spare took its place" in output, output
            async with aiohttp.ClientSession() as http, http.get(after["url"] + "/v1/status") as r:
                assert (await r.json())["pid"] == spare, "the spare did not become W1"

            async def new_spare() -> list[int]:
                return [pid for pid in up.children("--spare") if pid != spare]

            await eventually(new_spare, timeout=10, what="a new warm spare")
            task = await client.submit("echo", "after the kill")
            assert (await client.wait(task["id"], timeout=10))["result"] == "after the kill"
    finally:
        up.stop()


async def test_the_interactive_client_takes_the_payload_as_the_rest_of_the_line(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``mutirao client``: ``submit echo {"to": "you", "n": 1}`` as typed (no quoting of
    the JSON), the CLI's verb ``tasks`` (``list`` still works), a clear error for bad JSON."""
    await cluster.start("W1")
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path)
    lines = 'submit echo {"to": "you", "n": 1}\nsubmit echo {oops\ntasks\nlist succeeded\nquit\n'
    run = await cli("client", stdin=lines)
    assert run.code == 0, run
    submitted = re.search(r"submitted (\w+) ", run.out)
    assert submitted is not None, run
    assert "error: the payload is not valid JSON" in run.out, run
    assert run.out.count(submitted[1]) >= 2, "the task listed by `tasks`"
    async with cluster.client() as client:
        view = await client.wait(submitted[1], timeout=10)
    assert view["result"] == {"to": "you", "n": 1}


async def test_tasks_pages_and_many_failures_say_why(cluster: LocalCluster, tmp_path: Path) -> None:
    """``mutirao tasks`` says "100 of 106" and how to see the rest (``--after``);
    ``submit --count N --wait`` says why the failed ones failed."""
    await cluster.start("W1")
    cli = Cli(cli_env(tmp_path, MUTIRAO_URL=cluster.url, MUTIRAO_TOKEN=cluster.token()), tmp_path)
    async with cluster.client() as client:
        ids = [t["id"] for t in await client.submit_batch([{"type": "echo"}] * 106)]
        await client.wait_many(ids, timeout=20)
    first = await cli("tasks")
    assert first.code == 0, first
    assert len(first.out.strip().splitlines()) == 1 + 100, first
    hint = re.fullmatch(
        r"100 of 106 shown, newest first; the next ones: mutirao tasks --after (\d+)\n", first.err
    )
    assert hint is not None, first
    rest = await cli("tasks", "--after", hint[1])
    assert len(rest.out.strip().splitlines()) == 1 + 6, rest
    assert rest.err == "", rest
    shown = {line.split()[0] for run in (first, rest) for line in run.out.splitlines()[1:]}
    assert shown == set(ids)

    failed = await cli("submit", "fail", "--count", "6", "--max-attempts", "1", "--wait")
    assert failed.code == 1, failed
    assert failed.out.strip() == "6 failed", failed
    assert "  6 x failed after 1 attempts; last error: RuntimeError: " in failed.err, failed
