"""The web dashboard: its static files at ``/ui`` (served by the orchestrator itself, no
build step, nothing else to run) and the event stream its pages follow, ``/v1/events``.

The stream is server-sent events: every half second, the journal position (``lsn``), the
leader and epoch, and for admins the task counts and the standbys' lag. A page reloads
what it shows when the position moves, so it is live without asking the API every second.
The pages sign in with ``POST /v1/login`` and call the same API as every other client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from mutirao.orchestrator.reply import user_of
from mutirao.orchestrator.service import ORCHESTRATOR, Orchestrator

STATIC = Path(__file__).with_name("ui")
FILES = {
    "": ("index.html", "text/html"),
    "app.js": ("app.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
}
"""What ``/ui/...`` serves: these files only (no directory listing, no other path)."""
EVERY = 0.5
"""Seconds between two events of the stream."""
_HEADERS = {
    # The page's own script and style only; it talks to this origin only.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def page(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file", "")
    found = FILES.get(name)
    if found is None:
        raise web.HTTPNotFound()
    filename, content_type = found
    body = (STATIC / filename).read_bytes()
    return web.Response(body=body, content_type=content_type, headers=_HEADERS)


async def to_ui(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def _event(orch: Orchestrator, admin: bool) -> dict[str, Any]:
    view = orch.ha_view()  # of the active, the one node that serves the stream
    event: dict[str, Any] = {"lsn": orch.lsn, "leader": view["node"], "epoch": view["epoch"]}
    if admin:
        event["tasks"] = orch.engine.counts()
        event["standbys"] = orch.standby_views()
    return event


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events``: server-sent events until the client goes away."""
    orch, admin = request.app[ORCHESTRATOR], user_of(request).admin
    stream = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await stream.prepare(request)
    try:
        while orch.ready:
            await stream.write(b"data: " + orjson.dumps(_event(orch, admin)) + b"\n\n")
            await asyncio.sleep(EVERY)
    except ConnectionResetError:
        pass  # the page went away
    return stream


ROUTES = [
    web.get("/ui", to_ui),
    web.get("/ui/", page),
    web.get("/ui/{file}", page),
    web.get("/v1/events", events),
]
