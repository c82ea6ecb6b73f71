"""The local authority and the TLS contexts, without a network: certificates carry the role
and hosts the servers and the mTLS checks rely on, and contexts load them."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mutirao import tls
from mutirao.settings import Settings, SettingsError, TlsSettings, validate


def test_the_local_ca_signs_one_certificate_per_role_for_the_given_hosts(tmp_path: Path) -> None:
    ca = tls.local_ca(tmp_path, ["10.1.2.3", "node-a"])
    authority = x509.load_pem_x509_certificate(ca.ca.read_bytes())
    for role in tls.ROLES:
        cert = x509.load_pem_x509_certificate(ca.cert(role).read_bytes())
        cert.verify_directly_issued_by(authority)
        unit = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        assert [a.value for a in unit] == [role]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
            "10.1.2.3",
            "127.0.0.1",
        }
        assert set(names.get_values_for_type(x509.DNSName)) == {"node-a", "localhost"}
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
        assert stat.S_IMODE(ca.key(role).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_the_local_ca_is_kept_across_restarts(tmp_path: Path) -> None:
    first = tls.local_ca(tmp_path, ["127.0.0.1"]).ca.read_bytes()
    assert tls.local_ca(tmp_path, ["127.0.0.1"]).ca.read_bytes() == first
    (tmp_path / "worker.key").unlink()  # half a set is made again, whole
    assert tls.local_ca(tmp_path, ["127.0.0.1"]).ca.read_bytes() != first


def test_contexts_load_the_certificates_and_ask_for_client_certificates_with_mtls(
    tmp_path: Path,
) -> None:
    ca = tls.local_ca(tmp_path, ["127.0.0.1"])
    assert tls.server_context(TlsSettings()) is None
    assert tls.client_context(TlsSettings()) is None
    server = tls.server_context(ca.settings(tls.ORCHESTRATOR, client_auth=False))
    assert server is not None
    assert server.verify_mode == ssl.CERT_NONE
    mutual = tls.server_context(ca.settings(tls.ORCHESTRATOR, client_auth=True))
    assert mutual is not None
    # Optional in the handshake (people need none); the node endpoints require it.
    assert mutual.verify_mode == ssl.CERT_OPTIONAL
    client = tls.client_context(TlsSettings(ca=str(ca.ca)))
    assert client is not None
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert tls.scheme(ca.settings(tls.WORKER, client_auth=False)) == "https"


def test_mutual_tls_without_an_authority_is_refused() -> None:
    settings = Settings()
    settings.tls = TlsSettings(cert="node.pem", client_auth=True)
    with pytest.raises(SettingsError, match=r"tls\.client_auth needs"):
        validate(settings)


async def _served_certificate(port: int) -> bytes:
    anything = ssl.create_default_context()
    anything.check_hostname, anything.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anything)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


def _der(pem_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).public_bytes(Encoding.DER)


async def test_renewed_certificate_files_are_served_without_a_restart(tmp_path: Path) -> None:
    """What a rotation by cert-manager or the chart's hook Job looks like to a node: the
    mounted files are replaced; new connections get the new certificate, and a half-done
    replacement (a certificate without its key yet) keeps the old pair meanwhile."""
    old = tls.local_ca(tmp_path / "old", ["127.0.0.1"])
    new = tls.local_ca(tmp_path / "new", ["127.0.0.1"])
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(old.cert(tls.ORCHESTRATOR), cert)
    shutil.copy(old.key(tls.ORCHESTRATOR), key)
    ctx = tls.server_context(TlsSettings(cert=str(cert), key=str(key)))
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await _served_certificate(port) == _der(old.cert(tls.ORCHESTRATOR))
        assert tls.reload_changed() == 0  # nothing changed on disk

        shutil.copy(new.cert(tls.ORCHESTRATOR), cert.with_suffix(".tmp"))
        cert.with_suffix(".tmp").replace(cert)
        assert tls.reload_changed() == 0  # the new certificate does not match the old key
        assert await _served_certificate(port) == _der(old.cert(tls.ORCHESTRATOR))

        shutil.copy(new.key(tls.ORCHESTRATOR), key.with_suffix(".tmp"))
        key.with_suffix(".tmp").replace(key)
        assert tls.reload_changed() >= 1
        assert await _served_certificate(port) == _der(new.cert(tls.ORCHESTRATOR))
    finally:
        await runner.cleanup()
