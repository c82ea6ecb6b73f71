"""TLS on a real local cluster (``mutirao up --tls``): every link is HTTPS or WSS with the
certificates made in the data dir, plain HTTP gets no answer, the CLI finds the CA by
itself, a failover keeps it all; with ``--tls-client-auth`` the worker socket and
replication need the right node certificate."""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest

from mutirao import protocol
from mutirao.client.http import Client
from mutirao.tls import local_ca
from tests.integration.cluster import UpCluster, eventually
from tests.integration.test_cli import cli_env, mutirao


async def _plain_http_answers(url: str) -> bool:
    """Whether ``url`` answers a plain-HTTP request at all (over a TLS port it must not)."""
    plain = url.replace("https://", "http://")
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(plain + "/healthz"):
            return True
    except (aiohttp.ClientError, TimeoutError):
        return False


def _context(ca: str, cert: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, cert.with_suffix(".key"))
    return ctx


async def _standby_follows(client: Client) -> None:
    async def synced() -> bool:
        return [s["synced"] for s in (await client.cluster())["standbys"]] == [True]

    await eventually(synced, timeout=20, what="the standby to follow the leader")


async def test_up_tls_encrypts_every_link_and_the_cli_finds_the_ca(tmp_path: Path) -> None:
    env = cli_env(tmp_path, MUTIRAO_DATA_DIR=str(tmp_path / "data"))
    up = UpCluster(tmp_path, env)
    try:
        await up.start("--tls", "--workers", "1")
        info = up.info
        ca = info["ca"]
        assert ca == str((up.data_dir / "tls" / "ca.pem").resolve()), info
        assert all(url.startswith("https://") for url in info["urls"]), info
        for key in (up.data_dir / "tls").glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert f"MUTIRAO_TLS_CA={ca}" in up.proc_output()

        # The CLI, run where `mutirao up` ran and told nothing, finds URLs and CA...
        login = await mutirao(
            "login", "--user", "dev", "--password-stdin",
            env=env, cwd=tmp_path, stdin=info["password"] + "\n",
        )  # fmt: skip
        assert login.code == 0, login
        saved = json.loads((tmp_path / "config" / "credentials.json").read_text())
        assert (saved["urls"], saved["ca"]) == (info["urls"], ca), saved
        # ...and the saved login keeps them for commands run anywhere else.
        elsewhere = {k: v for k, v in env.items() if k != "MUTIRAO_DATA_DIR"}
        submit = await mutirao(
            "submit", "echo", "--payload", '"over tls"', "--wait", env=elsewhere, cwd=Path("/")
        )
        assert (submit.code, submit.out.strip()) == (0, '"over tls"'), submit

        # Without the CA, a client refuses the certificate at once and says what to do.
        untrusting = cli_env(tmp_path / "other", MUTIRAO_URL=info["urls"][0])
        refused = await mutirao("tasks", "--token", info["token"], env=untrusting, cwd=tmp_path)
        assert refused.code == 1, refused
        assert "certificate is not trusted" in refused.err, refused
        assert "MUTIRAO_TLS_CA" in refused.err, refused

        async with up.client() as client:
            await _standby_follows(client)
            [worker] = await client.workers()
            [standby] = (await client.cluster())["standbys"]
        assert worker["url"].startswith("https://"), worker
        assert standby["url"].startswith("https://"), standby
        # Plain HTTP is refused on every server: both orchestrators and the worker.
        for url in [*info["urls"], worker["url"]]:
            assert not await _plain_http_answers(url), f"{url} answered plain HTTP"

        # The standby followed over WSS: a SIGKILL of the active loses nothing.
        async with up.client() as client:
            first = await client.submit("echo", "before")
            await client.wait(first["id"], timeout=10)
            [active] = up.children("orchestrator")
            os.kill(active, signal.SIGKILL)

            async def leads() -> bool:
                view = await client.cluster()
                return bool(view["role"] == "active" and view["url"] == info["urls"][1])

            await eventually(leads, timeout=20, what="the backup to lead over TLS")
            second = await client.submit("echo", "after", wait=10)
            assert (second["state"], second["result"]) == ("succeeded", "after"), second
            again = await client.get(first["id"])
            assert again["state"] == "succeeded", again
            assert len(again["attempts"]) == 1, again
    finally:
        up.stop()


async def test_mutual_tls_lets_only_node_certificates_on_the_node_endpoints(
    tmp_path: Path,
) -> None:
    up = UpCluster(tmp_path, cli_env(tmp_path))
    try:
        await up.start("--tls-client-auth", "--workers", "1")
        info, tls_dir = up.info, up.data_dir / "tls"
        ca = info["ca"]
        async with up.client() as client:
            # People need no certificate for the API.
            done = await client.submit("echo", "mtls", wait=10)
            assert done["state"] == "succeeded", done
            assert [w["id"] for w in await client.workers()] == ["W1"]
            await _standby_follows(client)

        join = (up.data_dir / "join.token").read_text().strip()
        peer = (up.data_dir / "lease" / "peer.token").read_text().strip()
        url = info["urls"][0]
        as_worker = {protocol.JOIN_TOKEN_HEADER: join}
        as_peer = {protocol.PEER_TOKEN_HEADER: peer}
        cases = [
            # (certificate, path, secret header): each must be refused with 403.
            (None, protocol.WORKER_WS_PATH, as_worker),
            (tls_dir / "orchestrator.pem", protocol.WORKER_WS_PATH, as_worker),
            (None, protocol.REPLICATION_WS_PATH, as_peer),
            # A worker's certificate with a stolen peer token still never opens replication.
            (tls_dir / "worker.pem", protocol.REPLICATION_WS_PATH, as_peer),
        ]
        for cert, path, headers in cases:
            connector = aiohttp.TCPConnector(ssl=_context(ca, cert))
            async with aiohttp.ClientSession(connector=connector) as http:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(url + path, headers=headers)
                assert refused.value.status == 403, (cert, path)
                async with http.get(url + path, headers=headers) as resp:
                    body = await resp.json()
                assert (resp.status, body["field"]) == (403, "certificate"), (cert, path, body)

        # The worker's certificate does open the worker socket (W1 is registered above); a
        # certificate from another authority does not even finish the handshake.
        foreign = local_ca(tmp_path / "other-ca", ["127.0.0.1"])
        connector = aiohttp.TCPConnector(ssl=_context(ca, foreign.cert("worker")))
        async with aiohttp.ClientSession(connector=connector) as http:
            with pytest.raises(aiohttp.ClientError):
                await http.get(url + "/healthz")
    finally:
        up.stop()
