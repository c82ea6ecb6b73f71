"""The HTTP API on real processes: authentication and ownership, idempotent resubmission,
a 4xx naming the field for every bad input (with no state lost), the public endpoints, and
recovery from a torn journal tail."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from mutirao.auth import ADMIN, SECRET_FILE, TokenSigner, User
from mutirao.client.http import ApiError, Client
from mutirao.protocol import (
    JOIN_TOKEN_HEADER,
    PEER_TOKEN_HEADER,
    REPLICATION_WS_PATH,
    SESSION_PATH,
    WORKER_WS_PATH,
    TaskView,
)
from tests.integration.cluster import LocalCluster, Proc, eventually, free_port

_UNSET: Any = object()


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    content_type: str


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    json: Any = _UNSET,
    data: bytes | None = None,
) -> Reply:
    """One raw request; ``json`` is encoded, ``data`` is sent as is."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if json is not _UNSET:
        data = orjson.dumps(json)
        headers["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        text = raw.decode(errors="replace")
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return Reply(resp.status, body, text, resp.content_type)


def assert_error(reply: Reply, status: int, field: str | None = None) -> None:
    """A JSON error body with ``error`` and ``message`` (and ``field``), no traceback."""
    assert reply.status == status, reply
    assert reply.content_type == "application/json", reply
    assert isinstance(reply.body, dict), reply
    for key in ("error", "message"):
        assert isinstance(reply.body.get(key), str), reply
        assert reply.body[key], reply
    if field is not None:
        assert reply.body.get("field") == field, reply
    assert "Traceback" not in reply.text


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signer(cluster: LocalCluster) -> TokenSigner:
    return TokenSigner((cluster.data_dir / SECRET_FILE).read_text().strip())


# -- authentication and authorization ------------------------------------------------------


async def test_requests_without_valid_token_are_rejected(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    tasks = cluster.url + "/v1/tasks"
    assert_error(await call(http, "GET", tasks), 401)
    assert_error(await call(http, "POST", tasks, json={"type": "echo"}), 401)
    assert_error(await call(http, "GET", tasks + "/abc"), 401)
    assert_error(await call(http, "GET", cluster.url + "/v1/cluster"), 401)
    for garbage in ("garbage", "a.b", "a.b.c", "é.x", ""):
        assert_error(await call(http, "GET", tasks, token=garbage), 401)

    good = cluster.token()
    body, signature = good.split(".")
    claims = orjson.loads(_unb64(body))
    claims["sub"] = "mallory"
    forged = _b64(orjson.dumps(claims)) + "." + signature
    flipped = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    for tampered in (forged, flipped, good + "x", "." + signature, body + "."):
        assert_error(await call(http, "GET", tasks, token=tampered), 401)

    expired = _signer(cluster).mint(User("admin", ADMIN), time.time(), -10)
    reply = await call(http, "GET", tasks, token=expired)
    assert_error(reply, 401)
    assert "expired" in reply.body["message"]
    other_secret = TokenSigner("not-the-cluster-secret").mint(User("admin", ADMIN), time.time(), 60)
    assert_error(await call(http, "GET", tasks, token=other_secret), 401)

    ok = await call(http, "GET", tasks, token=good)
    assert ok.status == 200
    assert ok.body == {"tasks": [], "total": 0, "next": None}


async def test_login(cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
    await cluster.start("W1")
    await cluster.add_user("alice", "alice-password")
    login = cluster.url + "/v1/login"

    reply = await call(
        http, "POST", login, json={"username": "alice", "password": "alice-password"}
    )
    assert reply.status == 200, reply
    assert reply.body["user"] == "alice"
    assert reply.body["admin"] is False
    assert reply.body["expires_at"] > time.time()
    token = reply.body["token"]
    submitted = await call(
        http, "POST", cluster.url + "/v1/tasks", token=token, json={"type": "echo", "payload": 1}
    )
    assert submitted.status == 201, submitted
    assert submitted.body["owner"] == "alice"

    wrong = await call(http, "POST", login, json={"username": "alice", "password": "nope-nope"})
    assert_error(wrong, 401)
    nobody = await call(http, "POST", login, json={"username": "bob", "password": "whatever1"})
    assert_error(nobody, 401)
    assert wrong.body["message"] == nobody.body["message"], "must not reveal which user exists"

    assert_error(await call(http, "POST", login, json={"username": "alice"}), 422, "password")
    assert_error(await call(http, "POST", login, json={"password": "x"}), 422, "username")
    assert_error(
        await call(http, "POST", login, json={"username": 7, "password": "x"}), 422, "username"
    )
    assert_error(await call(http, "POST", login, json=["alice"]), 422, "body")
    assert_error(await call(http, "POST", login, data=b"{username"), 400, "body")
    assert_error(await call(http, "POST", login), 400, "body")


async def test_users_see_only_their_own_tasks(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    await cluster.start("W1")
    alice, bob, admin = (
        cluster.token("alice", admin=False),
        cluster.token("bob", admin=False),
        cluster.token(),
    )
    tasks = cluster.url + "/v1/tasks"
    mine = await call(http, "POST", tasks, token=alice, json={"type": "echo", "payload": "a"})
    theirs = await call(http, "POST", tasks, token=bob, json={"type": "echo", "payload": "b"})
    assert mine.status == theirs.status == 201
    a_id, b_id = mine.body["id"], theirs.body["id"]

    assert (await call(http, "GET", f"{tasks}/{a_id}", token=alice)).status == 200
    for path in (f"/{b_id}", f"/{b_id}/result"):
        assert_error(await call(http, "GET", tasks + path, token=alice), 404, "id")
    assert_error(await call(http, "POST", f"{tasks}/{b_id}/cancel", token=alice, json={}), 404)
    waited = await call(http, "POST", tasks + "/wait", token=alice, json={"ids": [a_id, b_id]})
    assert_error(waited, 404, "id")

    listed = await call(http, "GET", tasks, token=alice)
    assert [t["id"] for t in listed.body["tasks"]] == [a_id]
    listed = await call(http, "GET", tasks, token=bob)
    assert [t["id"] for t in listed.body["tasks"]] == [b_id]
    listed = await call(http, "GET", tasks, token=admin)
    assert {t["id"] for t in listed.body["tasks"]} == {a_id, b_id}
    seen = await call(http, "GET", f"{tasks}/{b_id}/result?wait=10", token=admin)
    assert seen.status == 200, seen
    assert seen.body["result"] == "b", seen

    assert_error(await call(http, "GET", cluster.url + "/v1/cluster", token=alice), 403)
    view = await call(http, "GET", cluster.url + "/v1/cluster", token=admin)
    assert view.status == 200
    assert [w["id"] for w in view.body["workers"]] == ["W1"]
    assert_error(await call(http, "GET", cluster.url + "/v1/workers", token=alice), 403)
    workers = await call(http, "GET", cluster.url + "/v1/workers", token=admin)
    assert workers.status == 200
    assert [w["id"] for w in workers.body["workers"]] == ["W1"]


async def test_worker_socket_needs_the_join_token(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    url = cluster.url + WORKER_WS_PATH
    for headers in (
        {},
        {JOIN_TOKEN_HEADER: "wrong"},
        {"Authorization": f"Bearer {cluster.token()}"},
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, headers=headers)
        assert info.value.status == 401
    # Right token, but a first message that is not a hello: closed with a protocol error.
    async with http.ws_connect(url, headers={JOIN_TOKEN_HEADER: cluster.join_token}) as ws:
        await ws.send_bytes(b'{"op": "heartbeat", "running": 0}')
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4400
    # A worker of an older version (its hello has no protocol: 1): refused, saying why.
    old_hello = {"op": "hello", "worker_id": "old", "url": "", "slots": 1, "types": ["echo"],
                 "running": [], "epoch": 0}  # fmt: skip
    async with http.ws_connect(url, headers={JOIN_TOKEN_HEADER: cluster.join_token}) as ws:
        await ws.send_json(old_hello)
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4400
    orchestrator = next(p for p in cluster.procs if p.name == "orchestrator")
    assert "worker old speaks worker protocol 1, this orchestrator 2" in orchestrator.output()
    assert (await call(http, "GET", cluster.url + "/readyz")).status == 200


async def test_the_join_token_opens_the_worker_socket_and_nothing_else(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    """The replication stream starts with a snapshot holding the token-signing secret and
    every password hash: only the orchestrators' peer token opens it, never a worker's
    join token (nor a login token, even an admin's); and the peer token is no worker
    credential either."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    replication = cluster.url + REPLICATION_WS_PATH
    for headers in (
        {JOIN_TOKEN_HEADER: cluster.join_token},
        {PEER_TOKEN_HEADER: cluster.join_token},
        {PEER_TOKEN_HEADER: ""},
        {"Authorization": f"Bearer {cluster.token()}"},
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(replication, headers=headers)
        assert info.value.status == 401, headers
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(
            cluster.url + WORKER_WS_PATH, headers={PEER_TOKEN_HEADER: cluster.peer_token}
        )
    assert info.value.status == 401
    follow = {"op": "follow", "node": "peer-check", "url": ""}
    async with http.ws_connect(
        replication, headers={PEER_TOKEN_HEADER: cluster.peer_token}, max_msg_size=0
    ) as ws:
        await ws.send_bytes(orjson.dumps(follow))
        first = await ws.receive(timeout=10)
        assert first.type is aiohttp.WSMsgType.BINARY, first


# -- idempotency -----------------------------------------------------------------------------


async def test_idempotent_resubmission(cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
    await cluster.start("W1")
    alice, bob = cluster.token("alice", admin=False), cluster.token("bob", admin=False)
    tasks = cluster.url + "/v1/tasks"
    spec = {"type": "echo", "payload": "once", "key": "order-1"}

    first = await call(http, "POST", tasks, token=alice, json=spec)
    again = await call(http, "POST", tasks, token=alice, json=spec)
    assert (first.status, again.status) == (201, 200), (first, again)
    assert first.body["id"] == again.body["id"]
    other = await call(http, "POST", tasks, token=bob, json=spec)
    assert other.status == 201
    assert other.body["id"] != first.body["id"]
    assert other.body["owner"] == "bob"

    batch = {"tasks": [{"type": "echo", "payload": i, "key": f"b-{i}"} for i in range(3)]}
    b1 = await call(http, "POST", tasks, token=alice, json=batch)
    b2 = await call(http, "POST", tasks, token=alice, json=batch)
    assert (b1.status, b2.status) == (201, 200), (b1, b2)
    ids = [t["id"] for t in b1.body["tasks"]]
    assert len(set(ids)) == 3
    assert [t["id"] for t in b2.body["tasks"]] == ids
    assert [t["key"] for t in b2.body["tasks"]] == ["b-0", "b-1", "b-2"]

    # One known key and one new: the request creates a task, so 201; the known id is reused.
    mixed = {"tasks": [{"type": "echo", "key": "b-1"}, {"type": "echo", "key": "b-9"}]}
    b3 = await call(http, "POST", tasks, token=alice, json=mixed)
    assert b3.status == 201
    assert b3.body["tasks"][0]["id"] == ids[1]
    assert b3.body["tasks"][1]["id"] not in ids
    # The same key twice in one batch names one task.
    twice = {"tasks": [{"type": "echo", "key": "dup"}, {"type": "echo", "key": "dup"}]}
    b4 = await call(http, "POST", tasks, token=alice, json=twice)
    assert b4.status == 201
    assert b4.body["tasks"][0]["id"] == b4.body["tasks"][1]["id"]

    listed = await call(http, "GET", tasks, token=alice)
    assert len(listed.body["tasks"]) == 1 + 3 + 1 + 1
    async with cluster.client(alice) as client:
        views = await client.wait_many([first.body["id"], *ids], timeout=10)
        assert [v["result"] for v in views] == ["once", 0, 1, 2]
        assert all(len(v["attempts"]) == 1 for v in views)
        # The brief view: just what a client collecting results needs.
        briefs = await client.results([first.body["id"], *ids], timeout=10)
    assert briefs == [
        {"id": v["id"], "state": "succeeded", "result": v["result"], "error": None} for v in views
    ]


# -- bad input -------------------------------------------------------------------------------


BIG_INT = b'{"type": "echo", "payload": {"n": 1000000000000000000000000000000}}'


def _nested(depth: int) -> bytes:
    return b'{"type": "echo", "payload": ' + b"[" * depth + b"]" * depth + b"}"


_BAD_SUBMISSIONS: list[tuple[str, bytes | None, int, str]] = [
    ("malformed JSON", b'{"type": "echo", ', 400, "body"),
    ("not UTF-8", b"\xff\xfe", 400, "body"),
    ("empty body", b"", 400, "body"),
    ("no body", None, 400, "body"),
    ("a JSON array", b"[1, 2]", 422, "body"),
    ("JSON null", b"null", 422, "body"),
    (
        "a resource that is no quantity",
        b'{"type": "echo", "resources": {"memory": "lots"}}',
        422,
        "resources.memory",
    ),
    ("a queue name with a space", b'{"type": "echo", "queue": "a b"}', 422, "queue"),
    ("a trace that is no traceparent", b'{"type": "echo", "trace": "00-1-2-01"}', 422, "trace"),
    ("missing type", b'{"payload": 1}', 422, "type"),
    ("empty type", b'{"type": ""}', 422, "type"),
    ("string priority", b'{"type": "echo", "priority": "high"}', 422, "priority"),
    ("fractional priority", b'{"type": "echo", "priority": 1.5}', 422, "priority"),
    ("boolean priority", b'{"type": "echo", "priority": true}', 422, "priority"),
    ("negative timeout", b'{"type": "echo", "timeout": -1}', 422, "timeout"),
    ("zero timeout", b'{"type": "echo", "timeout": 0}', 422, "timeout"),
    ("string timeout", b'{"type": "echo", "timeout": "5"}', 422, "timeout"),
    ("max_attempts 0", b'{"type": "echo", "max_attempts": 0}', 422, "max_attempts"),
    ("unknown field", b'{"type": "echo", "colour": "red"}', 422, "colour"),
    ("empty key", b'{"type": "echo", "key": ""}', 422, "key"),
    ("long key", b'{"type": "echo", "key": "' + b"k" * 300 + b'"}', 422, "key"),
    ("number key", b'{"type": "echo", "key": 5}', 422, "key"),
    ("infinite number", b'{"type": "echo", "timeout": 1e400}', 422, "timeout"),
    ("unknown field beside a batch", b'{"tasks": [{"type": "echo"}], "x": 1}', 422, "x"),
    ("empty batch", b'{"tasks": []}', 422, "tasks"),
    ("batch not a list", b'{"tasks": {"type": "echo"}}', 422, "tasks"),
    ("batch item not an object", b'{"tasks": [{"type": "echo"}, 3]}', 422, "tasks[1]"),
    (
        "batch item error",
        b'{"tasks": [{"type": "echo"}, {"type": "echo", "timeout": -1}]}',
        422,
        "tasks[1].timeout",
    ),
    (
        "batch with a bad resource name",
        b'{"tasks": [{"type": "echo"}, {"type": "echo"}, '
        b'{"type": "echo", "resources": {"GPU": 1}}]}',
        422,
        "tasks[2].resources.GPU",
    ),
    ("batch with unknown sibling", b'{"tasks": [{"type": "echo"}], "wait": 1}', 422, "wait"),
    (
        "payload over the limit",
        orjson.dumps({"type": "echo", "payload": "x" * 2000}),
        413,
        "payload",
    ),
    (
        "batch payload over the limit",
        orjson.dumps({"tasks": [{"type": "echo"}, {"type": "echo", "payload": ["y" * 2000]}]}),
        413,
        "tasks[1].payload",
    ),
    ("an integer beyond 64 bits", BIG_INT, 400, "payload"),
    (
        "an integer beyond 64 bits in a batch",
        b'{"tasks": [{"type": "echo"}, {"type": "echo", "payload": [-10, 1' + b"0" * 30 + b"]}]}",
        400,
        "tasks[1].payload",
    ),
    ("a float beyond range", b'{"type": "echo", "payload": [1, 2e400]}', 422, "payload[1]"),
    ("a payload nested 300 deep", _nested(300), 400, "payload"),
    ("a payload nested 1,000 deep", _nested(1000), 400, "body"),
    (
        "max_attempts beyond the bound",
        b'{"type": "echo", "max_attempts": 1000000}',
        422,
        "max_attempts",
    ),
    ("timeout beyond the bound", b'{"type": "echo", "timeout": 1e308}', 422, "timeout"),
    (
        "request over the limit",
        orjson.dumps({"type": "echo", "payload": "z" * 70_000}),
        413,
        "body",
    ),
]


async def test_bad_input_gets_4xx_naming_the_field_and_loses_nothing(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    cluster.env_extra["MUTIRAO_LIMITS_MAX_PAYLOAD_BYTES"] = "1000"
    cluster.env_extra["MUTIRAO_LIMITS_MAX_REQUEST_BYTES"] = "65536"
    await cluster.start("W1")
    token = cluster.token()
    tasks = cluster.url + "/v1/tasks"
    async with cluster.client(token) as client:
        before = await client.submit_batch([{"type": "echo", "payload": i} for i in range(5)])
        before_ids = [t["id"] for t in before]
        slow = await client.submit("sleep", 30)
        await client.wait_many(before_ids, timeout=10)

    failures = []
    for name, data, status, field in _BAD_SUBMISSIONS:
        reply = await call(http, "POST", tasks, token=token, data=data)
        try:
            assert_error(reply, status, field)
        except AssertionError:
            failures.append(f"{name}: expected {status} naming {field!r}, got {reply}")
    assert not failures, "\n".join(failures)

    just_under = await call(
        http, "POST", tasks, token=token, json={"type": "echo", "payload": "u" * 900}
    )
    assert just_under.status == 201, just_under

    done = before_ids[0]
    bad_queries: list[tuple[str, str, int, str | None]] = [
        ("GET", f"/v1/tasks/{'0' * 32}", 404, "id"),
        ("GET", f"/v1/tasks/{'0' * 32}/result", 404, "id"),
        ("POST", f"/v1/tasks/{'0' * 32}/cancel", 404, "id"),
        ("GET", f"/v1/tasks/{done}/result?wait=abc", 422, "wait"),
        ("GET", f"/v1/tasks/{done}/result?wait=-1", 422, "wait"),
        ("GET", f"/v1/tasks/{done}/result?wait=nan", 422, "wait"),
        ("GET", f"/v1/tasks/{done}/result?wait=inf", 422, "wait"),
        ("POST", f"/v1/tasks/{done}/cancel", 409, "id"),
        ("GET", "/v1/tasks?state=bogus", 422, "state"),
        ("GET", "/v1/tasks?limit=abc", 422, "limit"),
        ("GET", "/v1/tasks?limit=0", 422, "limit"),
        ("GET", "/v1/no-such-route", 404, None),
        ("GET", "/no-such-route", 404, None),
        ("DELETE", "/v1/tasks", 405, None),
    ]
    for method, path, status, named in bad_queries:
        reply = await call(http, method, cluster.url + path, token=token)
        try:
            assert_error(reply, status, named)
        except AssertionError:
            failures.append(f"{method} {path}: expected {status} naming {named!r}, got {reply}")
    wait = cluster.url + "/v1/tasks/wait"
    bad_waits: list[tuple[bytes, int, str]] = [
        (b"", 400, "body"),
        (b"[]", 422, "ids"),
        (b'{"ids": "abc"}', 422, "ids"),
        (b'{"ids": [1]}', 422, "ids"),
        (b'{"ids": [], "wait": -1}', 422, "wait"),
        (b'{"ids": [], "wait": "5"}', 422, "wait"),
        (b'{"ids": ["nope"]}', 404, "id"),
        (b'{"ids": [], "view": "short"}', 422, "view"),
    ]
    for data, status, field in bad_waits:
        reply = await call(http, "POST", wait, token=token, data=data)
        try:
            assert_error(reply, status, field)
        except AssertionError:
            failures.append(f"wait {data!r}: expected {status} naming {field!r}, got {reply}")
    assert not failures, "\n".join(failures)

    async with cluster.client(token) as client:
        after = await client.submit("echo", {"still": "working"})
        view = await client.wait(after["id"], timeout=10)
        assert view["state"] == "succeeded"
        assert view["result"] == {"still": "working"}
        earlier = [await client.get(i) for i in before_ids]
        assert [v["result"] for v in earlier] == [0, 1, 2, 3, 4]
        assert all(v["state"] == "succeeded" for v in earlier)
        assert (await client.get(slow["id"]))["state"] == "running"
        listed = {t["id"] for t in await client.tasks()}
        assert {*before_ids, slow["id"], after["id"], just_under.body["id"]} <= listed
        assert len(listed) == 8, "no bad request may create a task"
    log = cluster.procs[0].output()
    assert "Traceback" not in log, log[-3000:]
    assert "unexpected error" not in log, log[-3000:]


async def test_an_unstorable_submission_fails_alone_and_replication_carries_on(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    """A payload the journal cannot encode (an integer beyond 64 bits), among good
    submissions arriving together: it alone is refused (400 naming the field); the others
    share the journal flush, are answered, replicated to the standby and run."""
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_backup()
    cluster.start_worker("W1")
    await cluster.wait_workers("W1")
    token = cluster.token()
    tasks = cluster.url + "/v1/tasks"
    async with cluster.client(token) as client:
        await eventually(lambda: _standby_synced(client), timeout=20, what="standby in sync")
        good = [
            call(http, "POST", tasks, token=token, json={"type": "echo", "payload": i})
            for i in range(20)
        ]
        *together, refused = await asyncio.gather(
            *good, call(http, "POST", tasks, token=token, data=BIG_INT)
        )
        assert_error(refused, 400, "payload")
        assert [r.status for r in together] == [201] * 20, together
        views = await client.wait_many([r.body["id"] for r in together], timeout=10)
        assert [v["result"] for v in views] == list(range(20))
        info = await client.cluster()
        assert [(s["synced"], s["lag"]) for s in info["standbys"]] == [(True, 0)], info
    assert "Traceback" not in cluster.procs[0].output()


async def _standby_synced(client: Client) -> bool:
    return any(s["synced"] for s in (await client.cluster())["standbys"])


async def test_public_endpoints(cluster: LocalCluster, http: aiohttp.ClientSession) -> None:
    cluster.start_orchestrator()
    await cluster.wait_ready()
    health = await call(http, "GET", cluster.url + "/healthz")
    assert health.status == 200
    assert health.content_type == "application/json"
    assert health.body == {"status": "ok"}
    ready = await call(http, "GET", cluster.url + "/readyz")
    assert ready.status == 200
    assert ready.content_type == "application/json"
    assert ready.body["status"] == "ready"
    spec = await call(http, "GET", cluster.url + "/v1/openapi.json")
    assert spec.status == 200
    assert spec.content_type == "application/json"
    assert spec.body["openapi"].startswith("3.")
    for path in ("/v1/tasks", "/v1/tasks/{id}", "/v1/login", "/v1/users/{name}", "/v1/ha"):
        assert path in spec.body["paths"], sorted(spec.body["paths"])


# -- recovery --------------------------------------------------------------------------------


async def _after_restart(cluster: LocalCluster, client: Client, ids: list[str]) -> list[TaskView]:
    """The tasks' views once W1 is back and they have finished.

    Reads serve the in-memory state, which runs slightly ahead of the journal: a client can
    see "succeeded" a few milliseconds before the finish record is durable. If the
    orchestrator is SIGKILLed in that window, the task comes back as running and finishes
    again when the worker, reconnected, resends the result it kept in its outbox.
    """
    await cluster.wait_workers("W1")
    return await client.wait_many(ids, timeout=10)


async def test_torn_journal_tail_is_skipped_on_restart(cluster: LocalCluster) -> None:
    await cluster.start("W1")
    orchestrator = cluster.procs[0]
    async with cluster.client() as client:
        tasks = await client.submit_batch([{"type": "echo", "payload": i} for i in range(4)])
        ids = [t["id"] for t in tasks]
        done = await client.wait_many(ids, timeout=10)
        assert all(v["state"] == "succeeded" for v in done)

        orchestrator.kill()
        segments = sorted(cluster.data_dir.glob("journal-*.log"))
        assert segments, "the orchestrator journals every acknowledged task"
        with segments[-1].open("ab") as fh:
            fh.write(b'deadbeef {"e":"sub')
        seen = len(orchestrator.output())

        restarted = cluster.start_orchestrator()
        await cluster.wait_ready()
        output = restarted.output()[seen:]
        assert "torn or corrupt journal record" in output, output
        assert segments[-1].name in output
        assert "1 skipped" in output, output

        assert [(await client.get(i))["id"] for i in ids] == ids, "every task was recovered"
        views = await _after_restart(cluster, client, ids)
        assert [v["state"] for v in views] == ["succeeded"] * 4
        assert [v["result"] for v in views] == [0, 1, 2, 3]
        fresh = await client.submit("echo", "after the tear")
        view = await client.wait(fresh["id"], timeout=10)
        assert view["state"] == "succeeded"
        assert view["result"] == "after the tear"
        assert fresh["id"] not in ids
    assert "Traceback" not in restarted.output()[seen:]


async def test_second_orchestrator_on_the_same_data_dir_is_refused(
    cluster: LocalCluster,
) -> None:
    await cluster.start("W1")
    live = cluster.procs[0]
    async with cluster.client() as client:
        first = await client.submit("echo", "before")
        await client.wait(first["id"], timeout=10)
        # Started by mistake: on the same port (it could not bind) and on another one (two
        # writers on one journal). Each must refuse before touching the data dir.
        for extra in ((), ("--port", str(free_port()))):
            intruder = cluster.start_orchestrator(*extra)

            async def exited(proc: Proc = intruder) -> bool:
                return proc.popen is not None and proc.popen.poll() is not None

            await eventually(exited, timeout=10, what="the second orchestrator to give up")
            assert intruder.popen is not None
            assert intruder.popen.returncode == 1
        output = live.output()
        assert "is in use by another orchestrator" in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert not (cluster.data_dir / "state_checkpoint.json").exists()

        second = await client.submit("echo", "after")
        assert (await client.wait(second["id"], timeout=10))["state"] == "succeeded"
        live.kill()
        cluster.start_orchestrator()
        await cluster.wait_ready()
        # A result the client saw may not be journaled yet when the orchestrator dies (see
        # _after_restart); the worker's outbox resends it once it reconnects.
        views = await _after_restart(cluster, client, [first["id"], second["id"]])
    assert [(v["state"], v["result"]) for v in views] == [
        ("succeeded", "before"),
        ("succeeded", "after"),
    ]


# -- client sessions -------------------------------------------------------------------------


async def test_a_session_submits_like_post_and_answers_each_call(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    """``GET /v1/session``: each message answered on its own, by ref, with what
    ``POST /v1/tasks`` would answer; bad calls get the same errors and the session goes on."""
    await cluster.start("W1")
    alice = cluster.token("alice", admin=False)
    async with cluster.client(alice) as client, client.session() as session:
        tasks = await asyncio.gather(*(session.submit("echo", n) for n in range(50)))
        assert len({t["id"] for t in tasks}) == 50
        assert {t["owner"] for t in tasks} == {"alice"}
        done = await session.submit("sum", [1, 2, 3], wait=10)
        assert (done["state"], done["result"]) == ("succeeded", 6)
        again = await session.submit("echo", "once", key="k-1")
        assert (await session.submit("echo", "once", key="k-1"))["id"] == again["id"]
        with pytest.raises(ApiError) as info:
            await session.submit("echo", resources={"gpu": "many"})
        assert (info.value.status, info.value.body["field"]) == (422, "resources.gpu")
        with pytest.raises(ApiError) as info:
            await session.submit("echo", priority="high")
        assert (info.value.status, info.value.body["field"]) == (422, "priority")
        views = await client.wait_many([t["id"] for t in tasks], timeout=10)
        assert [v["result"] for v in views] == list(range(50))
        assert (await session.submit("echo", "still open"))["payload"] == "still open"

    url = cluster.url.replace("http", "ws") + SESSION_PATH
    headers = {"Authorization": f"Bearer {alice}"}
    async with http.ws_connect(url, headers=headers) as ws:
        for frame, status, field in [
            (b"not json", 400, "body"),
            (b'{"ref": 1}', 422, "task"),
            (b'{"ref": 2, "task": {"type": "echo"}, "colour": 1}', 422, "colour"),
            (b'{"ref": 3, "task": {"tasks": [{"type": "echo"}]}}', 422, "task"),
            (b'{"ref": 4, "task": {"type": "echo"}, "wait": -1}', 422, "wait"),
        ]:
            await ws.send_bytes(frame)
            reply = orjson.loads((await ws.receive(timeout=5)).data)
            assert (reply["status"], reply["error"]["field"]) == (status, field), frame
        await ws.send_bytes(b'{"ref": 5, "task": {"type": "echo", "payload": "ok"}}')
        assert orjson.loads((await ws.receive(timeout=5)).data)["status"] == 201
    # Batch mode: arrays of calls in, arrays of the replies ready out.
    async with http.ws_connect(url + "?batch=1", headers=headers) as ws:
        await ws.send_bytes(
            b'[{"ref": 6, "task": {"type": "echo"}}, {"ref": 7, "task": {"type": 1}},'
            b' {"ref": 8, "task": {"type": "echo"}, "wait": 5}]'
        )
        replies: dict[int, dict[str, Any]] = {}
        while len(replies) < 3:
            message = orjson.loads((await ws.receive(timeout=5)).data)
            assert isinstance(message, list), message
            replies.update((reply["ref"], reply) for reply in message)
        assert [replies[ref]["status"] for ref in (6, 7, 8)] == [201, 422, 201]
        assert replies[7]["error"]["field"] == "type"
        assert replies[8]["task"]["state"] == "succeeded"
        await ws.send_bytes(b"[not json")
        (reply,) = orjson.loads((await ws.receive(timeout=5)).data)
        assert (reply["status"], reply["error"]["field"]) == (400, "body")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url)
    assert refused.value.status == 401


async def test_task_lists_filter_and_a_finished_task_runs_again(cluster: LocalCluster) -> None:
    """What the dashboard asks: tasks by type, owner, id or key; Run again (``retry``) of a
    failed task only, by a user who may submit."""
    await cluster.start("W1")
    bob = cluster.token("bob", admin=False)
    async with cluster.client() as admin, cluster.client(bob) as client:
        mine = await client.submit("echo", 1, key="invoice-2026-17")
        other = await admin.submit("sum", [1, 2], wait=10)
        failed = await client.submit("fail", "x", max_attempts=1, wait=10)

        async def ids(**query: Any) -> list[str]:
            page = await admin.request("GET", "/v1/tasks", **query)
            return [t["id"] for t in page["tasks"]]

        assert await ids(type="sum") == [other["id"]]
        assert await ids(owner="bob") == [failed["id"], mine["id"]]
        assert await ids(q="2026-17") == [mine["id"]]
        assert await ids(q=mine["id"]) == [mine["id"]]
        again = await client.request("POST", f"/v1/tasks/{failed['id']}/retry", {})
        assert (again["type"], again["payload"], again["owner"]) == ("fail", "x", "bob")
        assert again["id"] != failed["id"]
        with pytest.raises(ApiError) as info:
            await admin.request("POST", f"/v1/tasks/{other['id']}/retry", {})
        assert (info.value.status, info.value.body["field"]) == (409, "id")
    async with cluster.client(cluster.token("vera", admin=False)) as client:
        with pytest.raises(ApiError) as info:
            await client.request("POST", f"/v1/tasks/{failed['id']}/retry", {})
        assert info.value.status == 404  # bob's, not hers to see
