"""``mutirao tls-secrets``, the chart's hook Job when cert-manager is absent, run as a real
process against KMock's emulator standing in for the API server (see
:mod:`tests.k8s.apiserver`): the Secrets the pods mount are created once, kept, renewed when
due, and bad input stops it with one line."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from mutirao import pki
from tests.k8s.apiserver import ApiServer
from tests.k8s.conftest import NAMESPACE, server_url, write_kubeconfig

SECRETS = "v1/secrets"
NAMES = ("m-ca", "m-orchestrator-tls", "m-worker-tls")
HOSTS = ["--orchestrator-host=m-orchestrator", "--orchestrator-host=*.m-orchestrator-headless",
         "--worker-host=m-worker"]  # fmt: skip


async def tls_secrets(apiserver: ApiServer, tmp_path: Path, *args: str) -> tuple[int, str]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server_url(apiserver))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mutirao", "tls-secrets", f"--namespace={NAMESPACE}",
        "--prefix=m", *args,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return await proc.wait(), out.decode()


def secret(apiserver: ApiServer, name: str) -> dict[str, object]:
    raw: dict[str, object] = apiserver.objects[SECRETS, NAMESPACE, name].raw
    return raw


def pem(apiserver: ApiServer, name: str, key: str = "tls.crt") -> bytes:
    data = secret(apiserver, name)["data"]
    assert isinstance(data, dict)
    return base64.b64decode(data[key])


async def test_the_job_creates_keeps_and_renews_the_secrets(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    code, out = await tls_secrets(apiserver, tmp_path, *HOSTS, "--label=app=mutirao")
    assert code == 0, out
    for name in NAMES:
        assert f"created Secret {NAMESPACE}/{name} (missing)" in out
        made = secret(apiserver, name)
        assert made["type"] == "kubernetes.io/tls"
        assert made["metadata"]["labels"] == {"app": "mutirao"}  # type: ignore[index]
    authority = x509.load_pem_x509_certificate(pem(apiserver, "m-ca"))
    orchestrator = x509.load_pem_x509_certificate(pem(apiserver, "m-orchestrator-tls"))
    orchestrator.verify_directly_issued_by(authority)
    unit = orchestrator.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in unit] == ["orchestrator"]
    assert pki.hosts_of(pem(apiserver, "m-orchestrator-tls")) == {
        "m-orchestrator",
        "*.m-orchestrator-headless",
    }
    assert pem(apiserver, "m-worker-tls", "ca.crt") == pem(apiserver, "m-ca")
    versions = {n: secret(apiserver, n)["metadata"]["resourceVersion"] for n in NAMES}  # type: ignore[index]

    code, out = await tls_secrets(apiserver, tmp_path, *HOSTS)
    assert code == 0, out
    assert out.count("is fine until") == 3, out
    assert {n: secret(apiserver, n)["metadata"]["resourceVersion"] for n in NAMES} == versions  # type: ignore[index]

    # Renewal is due when expiry is nearer than --renew-before-days: the nodes' certificates
    # (one year) are made again, the authority (ten years) stays.
    old = pem(apiserver, "m-worker-tls")
    code, out = await tls_secrets(
        apiserver, tmp_path, *HOSTS, "--days=400", "--renew-before-days=366"
    )
    assert code == 0, out
    assert "renewed Secret mutirao-test/m-worker-tls (expires " in out, out
    assert pem(apiserver, "m-worker-tls") != old
    assert secret(apiserver, "m-ca")["metadata"]["resourceVersion"] == versions["m-ca"]  # type: ignore[index]
    x509.load_pem_x509_certificate(pem(apiserver, "m-worker-tls")).verify_directly_issued_by(
        authority
    )


async def test_bad_input_stops_the_job_with_one_line(apiserver: ApiServer, tmp_path: Path) -> None:
    code, out = await tls_secrets(apiserver, tmp_path, "--worker-host=w")
    assert (code, out.splitlines()[0]) == (1, "error: give the orchestrators' names: "
                                           "--orchestrator-host HOST"), out  # fmt: skip
    code, out = await tls_secrets(apiserver, tmp_path, *HOSTS, "--label=oops")
    assert (code, out.strip()) == (1, "error: --label wants KEY=VALUE, not 'oops'")
    assert not [key for key in apiserver.objects if key[0] == SECRETS]
