"""The chart's TLS and pod hardening, checked on what `helm template` renders (real helm from
tools/bin/, no cluster): certificates from cert-manager or from the hook Job cover every
name the pods dial, each pod mounts only its own component's certificate, and every
workload runs restricted."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest

from mutirao import kube_certs, tls
from tests.k8s.test_chart import (
    VALUE_SETS,
    container,
    documents,
    env_of,
    find,
    helm_template,
)

WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def job_hosts(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The hosts the hook Job makes each component's certificate for."""
    args = container(find(objects, "Job", "mutirao-tls"))["args"]
    hosts: dict[str, list[str]] = {role: [] for role in tls.ROLES}
    for arg in args:
        for role in tls.ROLES:
            if arg.startswith(f"--{role}-host="):
                hosts[role].append(arg.split("=", 1)[1])
    return hosts


def dialled_hosts(objects: list[dict[str, Any]]) -> set[str]:
    """Every orchestrator host name a worker, a standby or the operator connects to."""
    sts = env_of(find(objects, "StatefulSet", "mutirao-orchestrator"))
    workers = env_of(find(objects, "Deployment", "mutirao-worker"))
    operator = env_of(find(objects, "Deployment", "mutirao-operator"))
    urls = [
        *workers["MUTIRAO_URL"].split(","),
        *sts["MUTIRAO_HA_PEERS"].split(","),
        sts["MUTIRAO_HA_URL"].replace("$(MUTIRAO_NODE_ID)", "mutirao-orchestrator-7"),
        sts["MUTIRAO_URL"],
        operator["MUTIRAO_URL"],
        # The operator reaches a Lease holder at https://<pod>.<service>:<port>.
        f"https://mutirao-orchestrator-0.{operator['MUTIRAO_OPERATOR_ORCHESTRATOR_SERVICE']}:7000",
    ]
    assert all(url.startswith("https://") for url in urls), urls
    return {url.split("://")[1].rsplit(":", 1)[0] for url in urls}


async def handshake(cert_dir: Path, server_hostname: str) -> None:
    server = tls.server_context(
        tls.TlsSettings(cert=str(cert_dir / "tls.crt"), key=str(cert_dir / "tls.key"))
    )
    client = tls.client_context(tls.TlsSettings(ca=str(cert_dir / "ca.crt")))
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=server_hostname
        )
        writer.close()
    finally:
        srv.close()


@pytest.fixture(scope="module")
def defaults(helm_env: dict[str, str]) -> list[dict[str, Any]]:
    return documents(helm_template(helm_env, []).stdout)


async def test_the_job_certificates_cover_every_name_the_pods_dial(
    defaults: list[dict[str, Any]], tmp_path: Path
) -> None:
    """What the hook Job would store, from the rendered Job's own arguments: a real TLS
    handshake, checked against the stored ca.crt, succeeds for every orchestrator URL in the
    rendered pods and fails for a name outside the release."""
    now = datetime.datetime.now(datetime.UTC)
    plan = kube_certs.plan(
        {}, "mutirao", job_hosts(defaults), now, days=365, renew_before=datetime.timedelta(30)
    )
    stored = tmp_path / "orchestrator"
    stored.mkdir()
    for key, value in plan.writes["mutirao-orchestrator-tls"].items():
        (stored / key).write_bytes(value)
    names = dialled_hosts(defaults)
    assert "mutirao-orchestrator-7.mutirao-orchestrator-headless.mutirao.svc" in names
    for name in sorted(names):
        await handshake(stored, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(stored, "mutirao-orchestrator.other-namespace.svc")


def test_cert_manager_certificates_match_the_job(
    defaults: list[dict[str, Any]], helm_env: dict[str, str]
) -> None:
    """Both providers issue the same names and roles: what the tests above prove for the
    Job holds for cert-manager."""
    objects = documents(helm_template(helm_env, ["--set=tls.provider=cert-manager"]).stdout)
    assert not [o for o in objects if o["kind"] in ("Job", "CronJob")]
    hosts = job_hosts(defaults)
    for role in tls.ROLES:
        cert = find(objects, "Certificate", f"mutirao-{role}-tls")["spec"]
        assert cert["secretName"] == f"mutirao-{role}-tls"
        assert cert["subject"]["organizationalUnits"] == [role]
        assert set(cert["dnsNames"]) | set(cert["ipAddresses"]) == set(hosts[role])
        assert {"server auth", "client auth"} <= set(cert["usages"])
        assert (cert["duration"], cert["renewBefore"]) == ("8760h", "720h")
        assert cert["issuerRef"] == {"name": "mutirao-ca", "kind": "Issuer",
                                     "group": "cert-manager.io"}  # fmt: skip
    ca = find(objects, "Certificate", "mutirao-ca")["spec"]
    assert ca["isCA"] is True
    assert ca["issuerRef"]["name"] == "mutirao-selfsigned"
    assert find(objects, "Issuer", "mutirao-ca")["spec"] == {"ca": {"secretName": "mutirao-ca"}}

    issued = documents(helm_template(helm_env, VALUE_SETS["cert-manager-issuer"]).stdout)
    assert not [o for o in issued if o["kind"] == "Issuer"]
    node = find(issued, "Certificate", "mutirao-worker-tls")["spec"]
    assert node["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


def test_auto_picks_cert_manager_only_where_the_cluster_serves_it(
    helm_env: dict[str, str],
) -> None:
    flags = ["--api-versions=cert-manager.io/v1/Certificate"]
    with_cm = {o["kind"] for o in documents(helm_template(helm_env, flags).stdout)}
    without = {o["kind"] for o in documents(helm_template(helm_env, []).stdout)}
    assert {"Certificate", "Issuer"} <= with_cm
    assert not {"Job", "CronJob"} & with_cm
    assert {"Job", "CronJob"} <= without
    assert not {"Certificate", "Issuer"} & without


def test_each_pod_mounts_only_its_own_certificate(defaults: list[dict[str, Any]]) -> None:
    def tls_volume(kind: str, name: str) -> dict[str, Any]:
        obj = find(defaults, kind, name)
        [mount] = [m for m in container(obj)["volumeMounts"] if m["name"] == "tls"]
        assert (mount["mountPath"], mount["readOnly"]) == ("/etc/mutirao/tls", True)
        [volume] = [v for v in pod_spec(obj)["volumes"] if v["name"] == "tls"]
        secret: dict[str, Any] = volume["secret"]
        return secret

    assert tls_volume("StatefulSet", "mutirao-orchestrator")["secretName"] == (
        "mutirao-orchestrator-tls"
    )
    assert tls_volume("Deployment", "mutirao-worker")["secretName"] == "mutirao-worker-tls"
    # The operator trusts the orchestrators' authority and holds no private key.
    operator = tls_volume("Deployment", "mutirao-operator")
    assert operator["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    for kind, name in (("StatefulSet", "mutirao-orchestrator"), ("Deployment", "mutirao-worker")):
        env = env_of(find(defaults, kind, name))
        assert env["MUTIRAO_TLS_CLIENT_AUTH"] == "true"  # mTLS on by default
        assert env["MUTIRAO_TLS_KEY"] == "/etc/mutirao/tls/tls.key"
    assert env_of(find(defaults, "Deployment", "mutirao-operator"))["MUTIRAO_TLS_CA"] == (
        "/etc/mutirao/tls/ca.crt"
    )


def test_plain_http_renders_no_certificates(helm_env: dict[str, str]) -> None:
    objects = documents(helm_template(helm_env, VALUE_SETS["plain-http"]).stdout)
    assert not [o for o in objects if o["metadata"]["name"].startswith("mutirao-tls")]
    workers = env_of(find(objects, "Deployment", "mutirao-worker"))
    assert workers["MUTIRAO_URL"].startswith("http://mutirao-orchestrator:7000,")
    assert "MUTIRAO_TLS_CERT" not in workers


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_workload_runs_restricted(values: str, helm_env: dict[str, str]) -> None:
    """The Pod Security "restricted" profile's rules, on every pod the chart can render."""
    objects = documents(helm_template(helm_env, VALUE_SETS[values]).stdout)
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    assert len(workloads) >= 3
    for obj in workloads:
        spec = pod_spec(obj)
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert "limits" in c["resources"], where
