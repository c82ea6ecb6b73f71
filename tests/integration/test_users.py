"""Users, roles and token revocations on a real cluster: the ``/v1/users`` API, and that all
of it lives in the journal, so it survives SIGKILL of the active and the old active's return."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from mutirao.client.http import ApiError, Client
from mutirao.protocol import SESSION_PATH
from tests.integration.cluster import LocalCluster, standby_synced

Status = tuple[int, dict[str, object]]


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: object = None
) -> Status:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def _logged_in(urls: list[str], name: str, password: str) -> AsyncIterator[Client]:
    async with Client(urls, "", retry_for=30) as client:
        await client.login(name, password)
        yield client


async def test_the_users_api_checks_who_asks_and_names_the_field(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    await cluster.start("W1")
    users, admin = cluster.url + "/v1/users", cluster.token()
    plain = cluster.token("bob", admin=False)

    for body, field in [
        ({"password": "long enough"}, "name"),
        ({"name": "x y", "password": "long enough"}, "name"),
        ({"name": "eve", "password": "short"}, "password"),
        ({"name": "eve", "password": 12345678}, "password"),
        ({"name": "eve", "password": "long enough", "role": "root"}, "role"),
        ({"name": "eve", "password": "long enough", "admin": "yes"}, "admin"),
        (["eve"], "body"),
    ]:
        status, reply = await _call(http, "POST", users, admin, body)
        assert (status, reply.get("field")) == (422, field), (body, reply)
    assert (await _call(http, "POST", users, plain, {"name": "eve", "password": "x" * 8}))[0] == 403
    assert (await _call(http, "GET", users, plain))[0] == 403

    status, reply = await _call(
        http, "POST", users, admin, {"name": "vera", "password": "vera-password", "role": "viewer"}
    )
    assert (status, reply) == (201, {"name": "vera", "role": "viewer", "admin": False})
    status, reply = await _call(http, "PATCH", users + "/vera", admin, {})
    assert (status, reply.get("field")) == (422, "body")
    status, reply = await _call(http, "PATCH", users + "/nobody", admin, {"role": "admin"})
    assert (status, reply.get("field")) == (404, "name")

    async with _logged_in([cluster.url], "vera", "vera-password") as vera:
        with pytest.raises(ApiError) as refused:
            await vera.submit("echo", 1)
        assert refused.value.status == 403
        assert "viewer" in str(refused.value)
        assert await vera.tasks() == []  # a viewer reads
        with pytest.raises(ApiError) as other:
            await vera.change_user("bob", password="new password")
        assert other.value.status == 403
        status, reply = await _call(http, "GET", users + "/vera", vera.token)
        assert status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as session:
            await http.ws_connect(
                cluster.url + SESSION_PATH, headers={"Authorization": f"Bearer {vera.token}"}
            )
        assert session.value.status == 403
    status, reply = await _call(http, "POST", cluster.url + "/v1/logout", admin, {})
    assert (status, reply.get("field")) == (422, "Authorization"), "a minted token"


async def test_users_and_revocations_survive_failover_and_the_old_active_returning(
    cluster: LocalCluster,
) -> None:
    """Users added one after another while the active is SIGKILLed: each acknowledged one
    logs in on the new leader, and again after the old active rejoined and took over back
    (which used to overwrite its users with a copy made at sync). A removed user, a changed
    password, a logged-out token and a signed-out user stay so through both failovers."""
    await cluster.start_ha("W1")
    urls, users = cluster.urls, 40
    acked: list[str] = []
    async with contextlib.AsyncExitStack() as stack, cluster.client(retry_for=30) as admin:
        for name in ("gone", "changer", "leaver", "signed"):
            await admin.add_user(name, f"{name}-password")
        await admin.remove_user("gone")
        await admin.change_user("changer", password="changer-new-password")
        leaver = await stack.enter_async_context(_logged_in(urls, "leaver", "leaver-password"))
        await leaver.logout()
        signed = await stack.enter_async_context(_logged_in(urls, "signed", "signed-password"))
        await admin.revoke_user("signed")

        async def add_users() -> None:
            for i in range(users):
                name = f"u{i}"
                try:
                    await admin.add_user(name, f"{name}-password")
                except ApiError as exc:
                    # The kill cut the reply of an add that was recorded: the client's retry
                    # finds the user there already.
                    if exc.status != 409:
                        raise
                acked.append(name)

        adding = asyncio.create_task(add_users())
        while len(acked) < 10:
            await asyncio.sleep(0.01)
            assert not adding.done(), adding
        cluster.proc("orchestrator").kill()
        await adding

        async def check(leader: str, epoch: int) -> None:
            info = await admin.cluster()
            assert (info["node"], info["epoch"]) == (leader, epoch)
            names = {u["name"] for u in await admin.users()}
            assert names == {"changer", "leaver", "signed", *acked}
            for name in acked:
                async with _logged_in(urls, name, f"{name}-password") as client:
                    assert (await client.submit("echo", name, wait=10))["result"] == name
            for name, password in [("gone", "gone-password"), ("changer", "changer-password")]:
                with pytest.raises(ApiError) as refused:
                    await stack.enter_async_context(_logged_in(urls, name, password))
                assert refused.value.status == 401
            async with _logged_in(urls, "changer", "changer-new-password"):
                pass
            for client in (leaver, signed):
                with pytest.raises(ApiError, match="revoked") as revoked:
                    await client.tasks()
                assert revoked.value.status == 401

        await check("backup", 2)
        cluster.start_orchestrator()  # the old active, on its old data dir: a standby now
        await standby_synced(admin, "orchestrator")
        cluster.proc("backup").kill()
        await check("orchestrator", 3)
    assert len(acked) == users
