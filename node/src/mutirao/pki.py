"""Certificates, PEM in and PEM out: a cluster authority, node certificates whose subject's
organizational unit names the node's role, and when one is due to be made again.

No files and no API calls here: ``tls.local_ca`` writes these to a data dir for ``mutirao
up --tls``, and :mod:`mutirao.kube_certs` keeps them in Kubernetes Secrets for the chart.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION = "Mutirão"
# Valid from a little before now: a node whose clock is a few minutes behind still accepts it.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key (unencrypted PKCS #8), both PEM."""

    cert: bytes
    key: bytes


def _name(common: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: float,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def new_ca(common_name: str, days: float, now: datetime.datetime | None = None) -> KeyPair:
    """A self-signed authority that may sign node certificates (and nothing below them)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, "ca")
    cert = (
        _builder(name, name, key.public_key(), now, days)
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
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(
    ca: KeyPair, role: str, hosts: Iterable[str], days: float, now: datetime.datetime | None = None
) -> KeyPair:
    """A certificate for ``role`` (its OU) valid for ``hosts`` (DNS names, ``*.`` wildcards
    or IP addresses), for serving and for presenting as a client alike."""
    now = now or datetime.datetime.now(datetime.UTC)
    authority = x509.load_pem_x509_certificate(ca.cert)
    signer = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the authority's key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(f"mutirao-{role}", role), authority.subject, key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def hosts_of(cert_pem: bytes) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return ips | set(names.get_values_for_type(x509.DNSName))


def renewal_reason(
    cert_pem: bytes | None,
    ca_pem: bytes,
    hosts: Iterable[str] | None,
    now: datetime.datetime,
    renew_before: datetime.timedelta,
) -> str | None:
    """Why ``cert_pem`` must be made again (missing, unreadable, not signed by ``ca_pem``,
    expiring within ``renew_before``, other hosts than ``hosts``), or None if it is fine."""
    if not cert_pem:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        authority = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return "unreadable"
    if cert.not_valid_after_utc - renew_before <= now:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert_pem != ca_pem:
        try:
            cert.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            return "not signed by the current authority"
    if hosts is not None and hosts_of(cert_pem) != set(hosts):
        return "its hosts changed"
    return None
