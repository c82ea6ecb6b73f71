"""The renewal rules of the chart's certificate Job (``kube_certs.plan``), without an API
server: what is made, what is kept, and how a new authority is rolled in."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from mutirao import kube_certs, pki

NOW = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
HOSTS = {"orchestrator": ["m-orchestrator", "*.m-orchestrator-headless"], "worker": ["m-worker"]}
NAMES = kube_certs.secret_names("m")
MONTH = datetime.timedelta(days=30)


def plan(stored: dict[str, kube_certs.Data], at: datetime.datetime = NOW,
         hosts: dict[str, list[str]] = HOSTS) -> kube_certs.Plan:  # fmt: skip
    return kube_certs.plan(stored, "m", hosts, at, days=365, renew_before=MONTH)


def certificate(data: kube_certs.Data) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data["tls.crt"])


def test_a_first_run_makes_an_authority_and_a_certificate_per_role() -> None:
    first = plan({})
    assert set(first.writes) == set(NAMES.values())
    authority = certificate(first.writes[NAMES["ca"]])
    for role in ("orchestrator", "worker"):
        data = first.writes[NAMES[role]]
        cert = certificate(data)
        cert.verify_directly_issued_by(authority)
        unit = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        assert [a.value for a in unit] == [role]
        assert pki.hosts_of(data["tls.crt"]) == set(HOSTS[role])
        assert data["ca.crt"] == first.writes[NAMES["ca"]]["tls.crt"]
        assert first.reasons[NAMES[role]] == "missing"


def test_a_second_run_keeps_everything_until_renewal_is_due() -> None:
    stored = plan({}).writes
    assert plan(stored).writes == {}
    assert plan(stored, at=NOW + datetime.timedelta(days=330)).writes == {}
    due = plan(stored, at=NOW + datetime.timedelta(days=336))
    # The nodes' certificates are due; the authority (ten years) is not.
    assert set(due.writes) == {NAMES["orchestrator"], NAMES["worker"]}
    assert due.reasons[NAMES["worker"]].startswith("expires ")
    for data in due.writes.values():
        certificate(data).verify_directly_issued_by(certificate(stored[NAMES["ca"]]))


def test_new_hosts_or_a_foreign_certificate_are_made_again() -> None:
    stored = plan({}).writes
    moved = plan(stored, hosts={**HOSTS, "worker": ["m-worker", "m-worker-metrics"]})
    assert moved.reasons == {NAMES["worker"]: "its hosts changed"}
    foreign = plan({**stored, NAMES["orchestrator"]: plan({}).writes[NAMES["orchestrator"]]})
    assert foreign.reasons == {NAMES["orchestrator"]: "not signed by the current authority"}


def test_a_renewed_authority_is_bundled_with_the_previous_one_while_it_lasts() -> None:
    stored = plan({}).writes
    old_ca = stored[NAMES["ca"]]["tls.crt"]
    late = NOW + datetime.timedelta(days=3650 - 10)
    renewed = plan(stored, at=late)
    assert set(renewed.writes) == set(NAMES.values())
    new_ca = renewed.writes[NAMES["ca"]]["tls.crt"]
    assert new_ca != old_ca
    for data in renewed.writes.values():
        # Nodes still presenting a certificate of the old authority are trusted meanwhile.
        assert data["ca.crt"] == new_ca + old_ca
    assert plan({**stored, **renewed.writes}, at=late).writes == {}
