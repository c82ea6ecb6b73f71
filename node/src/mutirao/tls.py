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

import datetime
import ipaddress
import os
import ssl
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


def scheme(tls: TlsSettings) -> str:
    return "https" if tls.cert else "http"


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The context a server listens with; None (plain HTTP) unless ``tls.cert`` is set."""
    if not tls.cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert, tls.key or None)
    if tls.client_auth:
        ctx.load_verify_locations(cafile=tls.ca or None)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The context for ``https``/``wss`` URLs: servers verified against ``tls.ca`` (the
    system's authorities if unset), this node's certificate presented if it has one. None:
    aiohttp's default (system authorities, no certificate)."""
    if not (tls.ca or tls.cert):
        return None
    ctx = ssl.create_default_context(cafile=tls.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key or None)
    return ctx


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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common: str, unit: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mutirão"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def write(path: Path, data: bytes, secret: bool) -> None:
        fd = open_private(path) if secret else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("Mutirão local CA", "ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"mutirao-{role}", role))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        write(found.key(role), pem_key(key), secret=True)
        write(found.cert(role), cert.public_bytes(serialization.Encoding.PEM), secret=False)
    # The CA's key is written last and kept only to sign again (a new host, a renewal).
    write(directory / "ca.key", pem_key(ca_key), secret=True)
    write(found.ca, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return found
