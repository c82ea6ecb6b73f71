"""The chart's certificates when cert-manager is not installed: ``mutirao tls-secrets``, run
by a Helm hook Job before every install and upgrade.

It keeps three Secrets of type ``kubernetes.io/tls``, with the keys cert-manager writes
(``tls.crt``, ``tls.key``, ``ca.crt``), so the pods mount either alike:

- ``<prefix>-ca``: the cluster's authority (its key never leaves this Secret);
- ``<prefix>-orchestrator-tls`` and ``<prefix>-worker-tls``: one certificate per role.

Each run makes again what is missing, expiring within ``--renew-before-days``, signed by
another authority or issued for other hosts, and leaves the rest alone; the nodes load
renewed files without a restart (``tls.reload_interval``). When the authority itself is
renewed, ``ca.crt`` carries the new and the previous one until the previous one expires, so
nodes that have not yet reloaded their certificate are still trusted.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from mutirao import pki
from mutirao.tls import ROLES

log = logging.getLogger(__name__)

Data = dict[str, bytes]
CA_DAYS = 3650


@dataclass(frozen=True)
class Plan:
    """What one run writes: Secret name -> data, and why each is written."""

    writes: dict[str, Data]
    reasons: dict[str, str]


def secret_names(prefix: str) -> dict[str, str]:
    """The Secret of the authority ("ca") and of each role."""
    return {"ca": f"{prefix}-ca", **{role: f"{prefix}-{role}-tls" for role in ROLES}}


def _still_valid(cert_pem: bytes, now: datetime.datetime) -> bool:
    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc > now
    except ValueError:
        return False


def plan(
    stored: Mapping[str, Data],
    prefix: str,
    hosts: Mapping[str, Sequence[str]],
    now: datetime.datetime,
    *,
    days: float,
    renew_before: datetime.timedelta,
) -> Plan:
    """The Secrets to write, given those already ``stored`` (name -> data): pure, so the
    renewal rules are tested without an API server."""
    names = secret_names(prefix)
    writes: dict[str, Data] = {}
    reasons: dict[str, str] = {}
    ca_data = stored.get(names["ca"], {})
    ca_cert = ca_data.get("tls.crt")
    why = pki.renewal_reason(ca_cert, ca_cert or b"", None, now, renew_before)
    if why is None and ca_cert is not None and "tls.key" in ca_data:
        ca = pki.KeyPair(ca_cert, ca_data["tls.key"])
        bundle = ca_data.get("ca.crt", ca_cert)
    else:
        ca = pki.new_ca("Mutirão cluster CA", CA_DAYS, now)
        previous = ca_cert if ca_cert and _still_valid(ca_cert, now) else b""
        bundle = ca.cert + previous
        writes[names["ca"]] = {"tls.crt": ca.cert, "tls.key": ca.key, "ca.crt": bundle}
        reasons[names["ca"]] = why or "its key is missing"
    for role in ROLES:
        name = names[role]
        data = stored.get(name, {})
        why = pki.renewal_reason(data.get("tls.crt"), ca.cert, hosts[role], now, renew_before)
        if why is None and data.get("ca.crt") != bundle:
            why = "the authorities' bundle changed"
        if why is None:
            continue
        pair = pki.issue(ca, role, hosts[role], days, now)
        writes[name] = {"tls.crt": pair.cert, "tls.key": pair.key, "ca.crt": bundle}
        reasons[name] = why
    return Plan(writes, reasons)


def _read(api: Any, namespace: str, name: str) -> Data | None:
    from kubernetes.client.exceptions import ApiException

    try:
        secret = api.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def _write(
    api: Any, namespace: str, name: str, data: Data, *, labels: dict[str, str], exists: bool
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
    if exists:
        api.replace_namespaced_secret(name, namespace, body)
    else:
        api.create_namespaced_secret(namespace, body)


def run(
    api: Any,
    namespace: str,
    prefix: str,
    hosts: Mapping[str, Sequence[str]],
    *,
    days: float,
    renew_before_days: float,
    labels: dict[str, str],
) -> Plan:
    """Read the Secrets, write what :func:`plan` says, log every decision."""
    stored = {}
    for name in secret_names(prefix).values():
        data = _read(api, namespace, name)
        if data is not None:
            stored[name] = data
    now = datetime.datetime.now(datetime.UTC)
    result = plan(
        stored,
        prefix,
        hosts,
        now,
        days=days,
        renew_before=datetime.timedelta(days=renew_before_days),
    )
    for name in secret_names(prefix).values():
        if name in result.writes:
            verb = "renewed" if name in stored else "created"
            _write(api, namespace, name, result.writes[name], labels=labels, exists=name in stored)
            log.info("%s Secret %s/%s (%s)", verb, namespace, name, result.reasons[name])
        else:
            until = x509.load_pem_x509_certificate(stored[name]["tls.crt"]).not_valid_after_utc
            log.info("Secret %s/%s is fine until %s UTC", namespace, name, f"{until:%Y-%m-%d}")
    return result


def main(args: argparse.Namespace) -> int:
    from kubernetes import client

    from mutirao.ha.kubernetes_lease import api_client

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hosts = {role: getattr(args, f"{role}_hosts") or ["localhost", "127.0.0.1"] for role in ROLES}
    if not args.orchestrator_hosts:
        # Workers, standbys and clients check the orchestrators' names.
        raise SystemExit("error: give the orchestrators' names: --orchestrator-host HOST")
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --label wants KEY=VALUE, not {item!r}")
        labels[key] = value
    if args.renew_before_days >= args.days:
        raise SystemExit("error: --renew-before-days must be shorter than --days")
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        with api_client() as api:
            run(
                client.CoreV1Api(api),
                args.namespace,
                args.prefix,
                hosts,
                days=args.days,
                renew_before_days=args.renew_before_days,
                labels=labels,
            )
    except ApiException as exc:
        raise SystemExit(f"error: the Kubernetes API refused: {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        raise SystemExit(f"error: cannot reach the Kubernetes API: {exc}") from None
    return 0
