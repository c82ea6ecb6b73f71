"""TLS for every link: contexts for servers and clients, the role a client certificate
proves, and a local certificate authority for ``mutirao up --tls``.

A node has one certificate (``tls.cert``), which it serves with and also presents when it
connects to another node (workers to the orchestrator's socket, standbys to the leader's
replication endpoint, the leader to a worker's switch endpoint). Its subject's
organizational unit names its role, ``orchestrator`` or ``worker``; with
``tls.client_auth`` the endpoints that carry secrets check that role, so a worker's
certificate, even with a stolen peer token, never opens replication.

The API port serves people and programs without certificates as well: the server asks for
a client certificate but does not require one in the handshake (``CERT_OPTIONAL``, which
still refuses one the CA did not sign); the endpoints above require it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mutirao.errors import ForbiddenError
from mutirao.private import open_private
from mutirao.settings import TlsSettings

ORCHESTRATOR = "orchestrator"
WORKER = "worker"
ROLES = (ORCHESTRATOR, WORKER)
CA_FILE = "ca.pem"

log = logging.getLogger(__name__)


def scheme(tls: TlsSettings) -> str:
    return "https" if tls.cert else "http"


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The context a server listens with; None (plain HTTP) unless ``tls.cert`` is set."""
    if not tls.cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_auth:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return _loaded(ctx, tls, trust=tls.client_auth)


def client_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The context for ``https``/``wss`` URLs: servers verified against ``tls.ca`` (the
    system's authorities if unset), this node's certificate presented if it has one. None:
    aiohttp's default (system authorities, no certificate)."""
    if not (tls.ca or tls.cert):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.ca:
        ctx.load_default_certs()
    return _loaded(ctx, tls, trust=bool(tls.ca))


# Every context made from certificate files, to load them again when they are renewed.
_watched: dict[
    tuple[str, str, str], tuple[tuple[object, ...], weakref.WeakKeyDictionary[ssl.SSLContext, bool]]
] = {}


def _files(tls: TlsSettings) -> tuple[str, str, str]:
    return (tls.cert, tls.key, tls.ca)


def _stamp(files: tuple[str, ...]) -> tuple[object, ...]:
    stamps: list[object] = []
    for path in files:
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
    return tuple(stamps)


def _load(ctx: ssl.SSLContext, files: tuple[str, str, str], trust: bool) -> None:
    cert, key, ca = files
    if cert:
        ctx.load_cert_chain(cert, key or None)
    if trust:
        # Adds to the authorities already trusted: during a rotation of the CA, nodes still
        # on the old one are accepted until this process restarts.
        ctx.load_verify_locations(cafile=ca or None)


def _loaded(ctx: ssl.SSLContext, tls: TlsSettings, *, trust: bool) -> ssl.SSLContext:
    files = _files(tls)
    _, contexts = _watched.setdefault(files, (_stamp(files), weakref.WeakKeyDictionary()))
    _load(ctx, files, trust)
    contexts[ctx] = trust
    return ctx


def reload_changed() -> int:
    """Load renewed certificate files into every live context made from them; returns how
    many contexts were reloaded. A half-written renewal (key and certificate not matching)
    keeps the old ones and is tried again next time."""
    reloaded = 0
    for files, (stamp, contexts) in list(_watched.items()):
        now = _stamp(files)
        if now == stamp:
            continue
        try:
            # A failed load can leave a context without a usable certificate: try first on
            # a scratch one.
            _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files, trust=bool(files[2]))
        except (OSError, ssl.SSLError) as exc:
            log.warning("renewed certificate %s not loaded yet: %s", files[0] or files[2], exc)
            continue
        for ctx, trust in list(contexts.items()):
            _load(ctx, files, trust)
            reloaded += 1
        _watched[files] = (now, contexts)
        log.info("loaded renewed certificate files %s", ", ".join(f for f in files if f))
    return reloaded


async def watch(interval: float) -> None:
    """Look for renewed certificate files every ``interval`` seconds, forever."""
    while True:
        await asyncio.sleep(interval)
        reload_changed()


def http_session(tls: TlsSettings, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose ``https``/``wss`` connections use :func:`client_context`."""
    ctx = client_context(tls)
    limit = kwargs.pop("limit", 100)
    connector = aiohttp.TCPConnector(limit=limit, ssl=ctx if ctx is not None else True)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def peer_role(request: web.Request) -> str | None:
    """The role in the client certificate the CA signed, if the client presented one."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "organizationalUnitName" and value in ROLES:
                return str(value)
    return None


def require_role(request: web.Request, tls: TlsSettings, role: str) -> None:
    """With ``tls.client_auth``, raise 403 unless the client proved ``role``."""
    if not tls.client_auth:
        return
    got = peer_role(request)
    if got != role:
        shown = f"a {got} certificate" if got else "no client certificate"
        raise ForbiddenError(
            f"this endpoint needs a client certificate of an {role} "
            f"(signed by the cluster's CA); the connection presented {shown}",
            field="certificate",
        )


@dataclass(frozen=True)
class LocalCa:
    """Files of a local authority and of the two node certificates it signed."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / CA_FILE

    def cert(self, role: str) -> Path:
        return self.dir / f"{role}.pem"

    def key(self, role: str) -> Path:
        return self.dir / f"{role}.key"

    def settings(self, role: str, *, client_auth: bool) -> TlsSettings:
        return TlsSettings(
            cert=str(self.cert(role)),
            key=str(self.key(role)),
            ca=str(self.ca),
            client_auth=client_auth,
        )


def local_ca(directory: Path, hosts: list[str], *, days: int = 825) -> LocalCa:
    """A CA and an orchestrator and a worker certificate for ``hosts`` in ``directory``
    (kept if already there, so a restarted cluster and its saved logins go on working);
    private keys are 0600."""
    found = LocalCa(directory)
    paths = [found.ca, *(p for r in ROLES for p in (found.cert(r), found.key(r)))]
    if all(p.exists() for p in paths):
        return found
    from mutirao import pki  # only here: cryptography takes 0.1 s to import

    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca("Mutirão local CA", days)
    for role in ROLES:
        pair = pki.issue(ca, role, [*hosts, "localhost", "127.0.0.1"], days)
        _write(found.key(role), pair.key, secret=True)
        _write(found.cert(role), pair.cert, secret=False)
    # The CA's key is written last and kept only to sign again (a new host, a renewal).
    _write(directory / "ca.key", ca.key, secret=True)
    _write(found.ca, ca.cert, secret=False)
    return found


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    fd = open_private(path) if secret else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
