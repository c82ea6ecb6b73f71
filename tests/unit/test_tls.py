"""The local authority and the TLS contexts, without a network: certificates carry the role
and hosts the servers and the mTLS checks rely on, and contexts load them."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
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
