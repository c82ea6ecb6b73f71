"""Credentials on a real cluster, tried as an attacker and as a user would: throttled
password guessing (while the cluster stays responsive), short access tokens renewed by a
refresh token, and sessions that a logout ends everywhere."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from mutirao import protocol
from mutirao.client.http import ApiError, Client
from tests.integration.cluster import LocalCluster, eventually, free_port
from tests.integration.scrape import scrape, total
from tests.integration.test_cli import cli_env, mutirao

PASSWORD = "right horse battery"


async def _login(
    http: aiohttp.ClientSession, url: str, name: str, password: str
) -> tuple[int, dict[str, object], dict[str, str]]:
    body = {"username": name, "password": password}
    async with http.post(url + "/v1/login", json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def _from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_password_guessing_is_throttled_counted_and_audited_while_health_stays_fast(
    cluster: LocalCluster,
) -> None:
    await cluster.start()
    await cluster.add_user("bob", PASSWORD)
    url = cluster.url
    async with _from("127.0.0.1") as attacker, aiohttp.ClientSession() as probe:
        latencies: list[float] = []
        flooding = True

        async def health() -> None:
            while flooding:
                started = time.perf_counter()
                async with probe.get(url + "/healthz") as resp:
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(health())
        answers = await asyncio.gather(
            *(_login(attacker, url, "bob", f"guess-{i}") for i in range(30))
        )
        flooding = False
        await prober
    statuses = Counter(status for status, _, _ in answers)
    assert statuses[401] >= 6, statuses  # 5 free failures, the 6th locks the user name
    assert statuses[429] >= 20, statuses
    assert statuses[401] + statuses[429] == 30, statuses
    refused = next((body, headers) for status, body, headers in answers if status == 429)
    assert refused[0]["field"] == "username", refused
    assert int(refused[1]["Retry-After"]) >= 1, refused
    # scrypt runs in a thread, one check at a time: the loop keeps serving everyone else.
    assert latencies, "no health probe ran during the flood"
    assert statistics.median(latencies) < 0.2, sorted(latencies)

    async with _from("127.0.0.3") as elsewhere:
        # Locked by name: the right password from another address waits too...
        status, body, _ = await _login(elsewhere, url, "bob", PASSWORD)
        assert status == 429, body

        # ...until the lock (a few seconds by now) runs out.
        async def let_in() -> bool:
            return (await _login(elsewhere, url, "bob", PASSWORD))[0] == 200

        await eventually(let_in, timeout=40, every=1.0, what="bob let in after the lock")

        # Guessing many names from one address locks the address, not those users.
        async with _from("127.0.0.2") as sprayer:
            for i in range(21):
                await _login(sprayer, url, f"user{i}", "wrong password")
            status, body, _ = await _login(sprayer, url, "bob", PASSWORD)
            assert status == 429, body
            assert "address" in str(body["message"]), body
        assert (await _login(elsewhere, url, "bob", PASSWORD))[0] == 200

    samples = await scrape(url)
    assert total(samples, "mutirao_logins_refused_total", reason="password") >= 6 + 21
    assert total(samples, "mutirao_logins_refused_total", reason="throttled") >= 21
    [trail] = (cluster.root / "logs").glob("audit-orchestrator-*.jsonl")
    entries = [json.loads(line) for line in trail.read_text().splitlines()]
    failed = [e for e in entries if e["event"] == "login" and e["outcome"] == "failed"]
    assert {(e["target"], e["address"]) for e in failed} >= {("bob", "127.0.0.1")}
    assert any(e["outcome"] == "throttled" and e["address"] == "127.0.0.2" for e in entries)
    assert any(e["event"] == "user.add" and e["target"] == "bob" for e in entries), entries
    assert any(e["event"] == "login" and e["outcome"] == "ok" for e in entries)
    assert all(e["time"].endswith("Z") and e["node"] for e in entries)


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, object]]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def test_access_tokens_expire_soon_and_a_refresh_renews_them_until_logout(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster.env_extra["MUTIRAO_AUTH_TOKEN_TTL"] = "2"
    await cluster.start("W1")
    await cluster.add_user("carla", PASSWORD)
    tasks = cluster.url + "/v1/tasks"
    async with aiohttp.ClientSession() as http:
        status, session, _ = await _login(http, cluster.url, "carla", PASSWORD)
        assert status == 200, session
        access, renew = str(session["token"]), str(session["refresh_token"])
        assert float(session["refresh_expires_at"]) - float(session["expires_at"]) > 3600
        assert (await _get(http, tasks, access))[0] == 200
        status, body = await _get(http, tasks, renew)
        assert (status, body["field"]) == (401, "Authorization"), body

        async def expired() -> bool:
            status, body = await _get(http, tasks, access)
            return status == 401 and body.get("expired") is True

        await eventually(expired, timeout=10, what="the access token to expire")
        async with http.post(cluster.url + "/v1/refresh", json={"refresh_token": renew}) as r:
            assert r.status == 200
            fresh = str((await r.json())["token"])
        assert (await _get(http, tasks, fresh))[0] == 200

        # The Python client renews by itself and says so (the CLI saves the new token).
        renewed: list[str] = []
        async with Client(
            cluster.urls, access, refresh_token=renew, on_refresh=renewed.append
        ) as c:
            await c.submit("echo", "after a refresh")
        assert len(renewed) == 1
        assert renewed[0] != access

        # A logout ends the session: its access tokens and its refresh token.
        async with http.post(
            cluster.url + "/v1/logout", headers={"Authorization": f"Bearer {fresh}"}
        ) as r:
            assert r.status == 200
        async with http.post(cluster.url + "/v1/refresh", json={"refresh_token": renew}) as r:
            assert r.status == 401
            assert "revoked" in (await r.json())["message"]
        assert (await _get(http, tasks, renewed[0]))[0] == 401

    # The CLI: a saved login outlives its access token.
    env = cli_env(tmp_path, MUTIRAO_URL=cluster.url)
    login = await mutirao(
        "login", "--user", "carla", "--password-stdin", env=env, cwd=tmp_path, stdin=PASSWORD
    )
    assert login.code == 0, login
    saved = tmp_path / "config" / "credentials.json"
    first = json.loads(saved.read_text())["token"]

    async def cli_expired() -> bool:
        async with aiohttp.ClientSession() as http:
            return (await _get(http, tasks, first))[0] == 401

    await eventually(cli_expired, timeout=10, what="the saved access token to expire")
    listed = await mutirao("tasks", env=env, cwd=tmp_path)
    assert listed.code == 0, listed
    assert listed.out.startswith("ID"), listed
    assert json.loads(saved.read_text())["token"] != first


async def _trickle(host: str, port: int, head: bytes, body: bool, deadline: float) -> bytes:
    """Open a connection from 127.0.0.2 and send ``head``, then one byte a second (of the
    headers or of the body), until the server answers or closes; what it answered."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
    writer.write(head)
    answer = b""
    try:
        while time.monotonic() < deadline:
            writer.write(b"x" if body else b"X")
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return answer  # closed while our bytes were on the way
            if not chunk:
                return answer
            answer += chunk
            if b"\r\n\r\n" in answer:
                return answer
        raise AssertionError(f"still open after the deadline, answered {answer!r}")
    finally:
        writer.close()


async def test_slow_clients_are_cut_off_and_one_address_cannot_hog_connections(
    cluster: LocalCluster,
) -> None:
    """200 connections from one address trickle a request at 1 B/s: those trickling a body get
    408 naming ``body``, those trickling headers are closed, those past the per-address cap
    are refused with 429; meanwhile another address's requests keep their latency."""
    # The timeouts leave room for opening all 200 connections (~1 s, several on a loaded
    # machine): one cut off before the last were open would free a place under the cap.
    cluster.env_extra.update(
        MUTIRAO_LIMITS_HEADER_TIMEOUT="5",
        MUTIRAO_LIMITS_BODY_TIMEOUT="5",
        MUTIRAO_LIMITS_CONNECTIONS_PER_ADDRESS="150",
    )
    await cluster.start("W1")
    host, port = "127.0.0.1", int(cluster.url.rsplit(":", 1)[1])
    token = cluster.token()
    post = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    get = f"GET /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n".encode()
    deadline = time.monotonic() + 30
    slow: list[asyncio.Task[bytes]] = []
    for i in range(200):
        head, body = (post, True) if i < 100 else (get, False)
        slow.append(asyncio.create_task(_trickle(host, port, head, body, deadline)))
        await asyncio.sleep(0.005)  # in order, so the last 50 are the ones past the cap

    latencies: list[float] = []
    async with cluster.client(token) as client:
        while not all(t.done() for t in slow[:150]):
            started = time.perf_counter()
            await client.submit("echo", {"n": len(latencies)}, wait=5)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
            assert time.monotonic() < deadline, "slow connections still open"
    answers = await asyncio.gather(*slow)

    for answer in answers[:100]:
        assert answer.startswith(b"HTTP/1.1 408"), answer
    assert all(b'"field":"body"' in a for a in answers[:100] if a.endswith(b"}")), answers[0]
    assert all(a == b"" for a in answers[100:150]), answers[100:150]
    for answer in answers[150:]:
        assert answer.startswith(b"HTTP/1.1 429"), answer
    assert len(latencies) >= 10, latencies
    assert statistics.median(latencies) < 0.2, sorted(latencies)

    samples = await scrape(cluster.url)
    refused = "mutirao_http_connections_refused_total"
    assert total(samples, refused, reason="body_timeout") == 100
    assert total(samples, refused, reason="header_timeout") == 50
    assert total(samples, refused, reason="per_address") == 50


async def test_the_operator_token_submits_and_reads_its_own_tasks_and_nothing_else(
    cluster: LocalCluster,
) -> None:
    """The chart gives the operator this static token instead of the token-signing key
    (which could mint an admin): it acts as the submitter ``mutirao-operator``."""
    cluster.env_extra["MUTIRAO_AUTH_OPERATOR_TOKEN"] = "operator-secret-for-tests"
    await cluster.start("W1")
    async with cluster.client("operator-secret-for-tests") as operator:
        done = await operator.submit("echo", "from a Task", wait=10)
        assert (done["state"], done["owner"]) == ("succeeded", "mutirao-operator"), done
        assert [t["id"] for t in await operator.tasks()] == [done["id"]]
        for admin_only in (operator.users, operator.workers, operator.cluster):
            with pytest.raises(ApiError) as refused:
                await admin_only()
            assert refused.value.status == 403, admin_only
    async with cluster.client(cluster.token()) as admin:
        other = await admin.submit("echo", "not the operator's", wait=10)
    async with cluster.client("operator-secret-for-tests") as operator:
        assert other["id"] not in [t["id"] for t in await operator.tasks()]
    async with cluster.client("operator-secret-for-test") as wrong:
        with pytest.raises(ApiError) as refused:
            await wrong.tasks()
        assert refused.value.status == 401


async def test_with_a_peer_port_replication_is_served_there_only(cluster: LocalCluster) -> None:
    """``ha.peer_port`` moves replication off the API port (so a NetworkPolicy can keep it to
    the orchestrators): the API port no longer serves it, the peer port serves nothing else,
    and a standby following there takes over after a SIGKILL with nothing lost."""
    peer_port = free_port()
    cluster.backup_host = "127.0.0.2"  # both orchestrators listen on the same peer port
    cluster.env_extra["MUTIRAO_HA_PEER_PORT"] = str(peer_port)
    await cluster.start_ha("W1")
    headers = {protocol.PEER_TOKEN_HEADER: cluster.peer_token}
    async with aiohttp.ClientSession() as http:
        for api in cluster.urls:
            async with http.get(api + protocol.REPLICATION_WS_PATH, headers=headers) as resp:
                assert resp.status == 404, api
        for host in ("127.0.0.1", "127.0.0.2"):
            peer = f"http://{host}:{peer_port}"
            async with http.get(peer + "/v1/tasks", headers=headers) as resp:
                assert resp.status == 404, peer
            async with http.get(peer + protocol.REPLICATION_WS_PATH) as resp:
                assert resp.status == 401, peer  # there, but for the peer token only

    async with cluster.client() as client:
        tasks = [await client.submit("sleep", 0.2) for _ in range(8)]
        cluster.proc("orchestrator").kill()
        views = await client.wait_many([t["id"] for t in tasks], timeout=30)
        assert [v["state"] for v in views] == ["succeeded"] * 8, views
        assert (await client.cluster())["url"] == cluster.backup_url
