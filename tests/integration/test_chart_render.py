"""The Helm chart as ``helm lint --strict`` and ``helm template`` see it, with the pinned helm:
each ci/*-values.yaml lints, bad values are refused with the schema's own words, and the
rendered objects carry what a user relies on (labels and selectors, security contexts,
command lines per watch mode, probes, RBAC, the CRD's keep policy, the optional objects).
No control plane: tests/integration/test_chart.py applies and installs the chart."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chart import (
    AUTH_FLAGS,
    CHART,
    CI_VALUES,
    LEADER_FLAGS,
    RENDER_NS,
    by_kind,
    container,
    deployment_command,
    helm_env,
    named,
    render,
)

# Needs the pinned helm that `python -m devstack build k8s` builds.
pytestmark = pytest.mark.cluster

NS = RENDER_NS
LABELS = {
    "app.kubernetes.io/name": "rolegate",
    "app.kubernetes.io/instance": "rolegate",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "rolegate",
    "helm.sh/chart": "rolegate-0.1.0",
}


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs by component: the two Deployments' templates and the test hook Pod."""
    out = {}
    for doc in docs:
        if doc["kind"] == "Deployment":
            out[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = doc["spec"]["template"][
                "spec"
            ]
        elif doc["kind"] == "Pod":
            out["test"] = doc["spec"]
    return out


@pytest.mark.parametrize("values", CI_VALUES)
def test_helm_lint_strict_passes(k8s_bin_dir: Path, helm_home: Path, values: str) -> None:
    done = subprocess.run(
        [
            str(k8s_bin_dir / "helm"),
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(CHART / "ci" / values),
        ],
        capture_output=True,
        text=True,
        env=helm_env(helm_home),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["gateway.replicas=0"], "at '/gateway/replicas': minimum: got 0, want 1"),
        (["gateway.replica=2"], "at '/gateway': additional properties 'replica' not allowed"),
        (["operator.resyncinterval=5"], "additional properties 'resyncinterval' not allowed"),
        (["imagee.tag=x"], "additional properties 'imagee' not allowed"),
        (["gateway.port=http"], "at '/gateway/port': got string, want integer"),
        (["crds.install=yes"], "at '/crds/install': got string, want boolean"),
        (["gateway.service.type=External"], "value must be one of 'ClusterIP', 'NodePort'"),
        (["operator.logLevel=verbose"], "at '/operator/logLevel': value must be one of"),
        (["watchNamespaces={Team-A}"], "'Team-A' does not match pattern"),
        (["gateway.pdb.maxUnavailable=half"], "'half' does not match pattern"),
        (["gateway.serviceMonitor.interval=often"], "'often' does not match pattern"),
        (["watchNamespaces={*,team-a}"], '"*" (every namespace) goes alone'),
        (["apiServer.host=127.0.0.1"], "apiServer: host is set without port"),
        (["podSecurityContext.runAsNonroot=true"], "invalid propertyName 'runAsNonroot'"),
        (["containerSecurityContext.readOnlyRootFS=true"], "invalid propertyName 'readOnlyRootFS'"),
        (
            ["gateway.pdb.minAvailable=1", "gateway.pdb.maxUnavailable=1"],
            "gateway.pdb: set minAvailable or maxUnavailable, not both",
        ),
        (["hostNetwork=true", "gateway.replicas=2"], "would share gateway.port on one node"),
        (
            ["hostNetwork=true", "operator.livenessPort=8080", "gateway.port=8080"],
            "the two pods would want one port of the node",
        ),
    ],
)
def test_bad_values_are_refused_with_a_message(
    k8s_bin_dir: Path, helm_home: Path, sets: list[str], message: str
) -> None:
    done = render(k8s_bin_dir, helm_home, sets=sets, check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stdout == ""


def test_every_object_has_the_recommended_labels_and_selectors_use_three(chart: Any) -> None:
    docs = chart(values=("pdb-servicemonitor-values.yaml",))
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Pod",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        component = labels.get("app.kubernetes.io/component")
        assert component in {"operator", "gateway", "crd", "test"}, doc["metadata"]["name"]
        assert {k: v for k, v in labels.items() if k in LABELS} == LABELS, doc["metadata"]["name"]
        # The test pod and its identity are `helm test` hooks (created by `helm test` only,
        # deleted once it passed); everything else is an ordinary object of the release.
        hook = doc["metadata"].get("annotations", {}).get("helm.sh/hook")
        assert hook == ("test" if component == "test" else None), doc["metadata"]["name"]
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NS
    selector = {
        "app.kubernetes.io/name": "rolegate",
        "app.kubernetes.io/instance": "rolegate",
        "app.kubernetes.io/component": "gateway",
    }
    gateway = named(docs, "Deployment", "rolegate-gateway")
    assert gateway["spec"]["selector"] == {"matchLabels": selector}
    assert named(docs, "Service", "rolegate-gateway")["spec"]["selector"] == selector
    assert named(docs, "PodDisruptionBudget", "rolegate-gateway")["spec"]["selector"] == {
        "matchLabels": selector
    }
    assert named(docs, "ServiceMonitor", "rolegate-gateway")["spec"]["selector"] == {
        "matchLabels": selector
    }
    operator = named(docs, "Deployment", "rolegate-operator")
    assert operator["spec"]["selector"]["matchLabels"] == {
        **selector,
        "app.kubernetes.io/component": "operator",
    }
    for deployment in (gateway, operator):
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_every_pod_runs_restricted(chart: Any) -> None:
    specs = pods(chart())
    assert sorted(specs) == ["gateway", "operator", "test"]
    for component, spec in specs.items():
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, component
        [box] = spec["containers"]
        assert box["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, component
        assert box["image"] == "ghcr.io/rolegate/rolegate:0.1.0"
        assert "hostNetwork" not in spec
    for component in ("operator", "gateway"):
        spec = specs[component]
        assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]


def test_tokens_are_mounted_only_where_the_api_is_used(chart: Any) -> None:
    docs = chart()
    accounts = {d["metadata"]["name"]: d for d in by_kind(docs, "ServiceAccount")}
    assert sorted(accounts) == ["rolegate-gateway", "rolegate-operator", "rolegate-test"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    specs = pods(docs)
    assert specs["operator"]["serviceAccountName"] == "rolegate-operator"
    assert specs["gateway"]["serviceAccountName"] == "rolegate-gateway"
    assert specs["operator"]["automountServiceAccountToken"] is True
    assert specs["gateway"]["automountServiceAccountToken"] is True
    # The test pod: only a projected token of the gateway's audience (test_chart_access.py).
    assert specs["test"]["automountServiceAccountToken"] is False
    assert specs["test"]["serviceAccountName"] == "rolegate-test"


@pytest.mark.parametrize(
    ("sets", "scope"),
    [
        ([], ["--namespace", NS]),
        (["watchNamespaces={team-a,team-b}"], ["--namespace", "team-a", "--namespace", "team-b"]),
        (["watchNamespaces={*}"], ["--all-namespaces"]),
    ],
)
def test_operator_command_per_watch_mode(chart: Any, sets: list[str], scope: list[str]) -> None:
    docs = chart(*sets)
    assert deployment_command(docs, "operator") == [
        "rolegate-operator",
        "run",
        *scope,
        "--gateway-config-secret",
        f"{NS}/rolegate-gateway-config",
        "--config-owner-service-account",
        "rolegate-operator",
        "--liveness",
        "0.0.0.0:8081",
        "--resync-interval",
        "60",
        *LEADER_FLAGS,
        "--log-level",
        "info",
        "--log-format",
        "json",
    ]
    operator = named(docs, "Deployment", "rolegate-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    box = container(operator)
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    # The start waits for the LLMRole API before /healthz answers: minutes, not seconds.
    startup = box["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container(operator)["ports"] == [
        {"name": "liveness", "containerPort": 8081, "protocol": "TCP"}
    ]


#: The Roles (and RoleBindings) the chart makes in each watched namespace.
WATCHED = ("rolegate-gateway-backends", "rolegate-operator")


def test_rbac_per_watch_mode(chart: Any) -> None:
    def roles(docs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        kinds = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
        return sorted(
            (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            for d in docs
            if d["kind"] in kinds
        )

    # Access control (gateway.auth.mode kubernetes, the default; test_chart_access.py): the
    # gateway's reviews, the ClusterRole users bind, and the test pod's binding to it (a test
    # hook: it exists only while `helm test` runs; test_chart_access.py).
    common = [
        ("Role", NS, "rolegate-gateway"),
        ("Role", NS, "rolegate-operator-config"),
        ("RoleBinding", NS, "rolegate-gateway"),
        ("RoleBinding", NS, "rolegate-operator-config"),
        ("ClusterRole", "", "rolegate-user"),
        ("ClusterRoleBinding", "", f"rolegate-gateway-auth-delegator-{NS}"),
    ]
    assert roles(chart()) == sorted(
        [
            *common,
            *[(kind, NS, name) for kind in ("Role", "RoleBinding") for name in WATCHED],
            ("RoleBinding", NS, "rolegate-test"),
        ]
    )
    assert roles(chart("watchNamespaces={team-a,team-b}")) == sorted(
        [
            *common,
            *[
                (kind, ns, name)
                for kind in ("Role", "RoleBinding")
                for ns in ("team-a", "team-b")
                for name in WATCHED
            ],
            ("RoleBinding", "team-a", "rolegate-test"),
            ("RoleBinding", "team-b", "rolegate-test"),
        ]
    )
    everywhere = chart("watchNamespaces={*}")
    assert roles(everywhere) == sorted(
        [
            *common,
            *[
                (kind, "", f"rolegate-{account}-{NS}")
                for kind in ("ClusterRole", "ClusterRoleBinding")
                for account in ("gateway", "operator")
            ],
            ("ClusterRoleBinding", "", f"rolegate-test-{NS}"),
        ]
    )
    cluster_role = named(everywhere, "ClusterRole", f"rolegate-operator-{NS}")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["rolegate.dev"],
            "resources": ["llmroles"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["rolegate.dev"],
            "resources": ["llmroles/status"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        # The backends of serve: roles, and their pods for BackendReady.
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["services"],
            "verbs": ["get", "list", "create", "patch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        # The gateway replicas' Leases (status.gateways), watched where the roles are.
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["list", "watch"],
        },
    ]
    binding = named(everywhere, "ClusterRoleBinding", f"rolegate-operator-{NS}")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rolegate-operator", "namespace": NS}
    ]
    # The gateway lists and watches EndpointSlices where the roles are (their backends).
    backends = [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        }
    ]
    assert named(everywhere, "ClusterRole", f"rolegate-gateway-{NS}")["rules"] == backends
    assert named(everywhere, "ClusterRoleBinding", f"rolegate-gateway-{NS}")["subjects"] == [
        {"kind": "ServiceAccount", "name": "rolegate-gateway", "namespace": NS}
    ]
    listed = chart("watchNamespaces={team-a,team-b}")
    rules = [d.get("rules") for d in listed if d["metadata"]["name"] == "rolegate-gateway-backends"]
    assert rules == [backends, backends, None, None]  # a Role and a RoleBinding per namespace
    gateway_role = named(everywhere, "Role", "rolegate-gateway")
    assert gateway_role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["rolegate-gateway-config"],
            "verbs": ["get", "list", "watch"],
        },
        # Its own Lease and its peers' (test_chart_ha.py).
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "create", "update", "delete"],
        },
    ]


def test_gateway_command_probes_and_grace(chart: Any) -> None:
    docs = chart("gateway.shutdownTimeout=50", "gateway.port=9000", "gateway.replicas=3")
    gateway = named(docs, "Deployment", "rolegate-gateway")
    assert deployment_command(docs, "gateway") == [
        "rolegate-gateway",
        "--config-secret",
        f"{NS}/rolegate-gateway-config",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--shutdown-timeout",
        "50",
        "--drain-grace",
        "15",
        *AUTH_FLAGS,
        "--presence-lease-duration",
        "10",
        "--presence-renew",
        "3",
        "--upstream-check-interval",
        "30",
        "--upstream-check-timeout",
        "5",
        "--fallback-replicas",
        "3",
        "--log-level",
        "info",
        "--log-format",
        "json",
    ]
    spec = gateway["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 65  # 5 + 50 + 10
    box = container(gateway)
    assert box["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert box["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert box["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert box["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    service = named(docs, "Service", "rolegate-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_crd_install_and_keep(chart: Any) -> None:
    crd = named(chart(), "CustomResourceDefinition", "llmroles.rolegate.dev")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"
    loose = named(chart("crds.keep=false"), "CustomResourceDefinition", "llmroles.rolegate.dev")
    assert "annotations" not in loose["metadata"]
    assert by_kind(chart("crds.install=false"), "CustomResourceDefinition") == []


def test_pdb_and_service_monitor_only_when_enabled(chart: Any) -> None:
    plain = chart()
    assert by_kind(plain, "PodDisruptionBudget") == []
    assert by_kind(plain, "ServiceMonitor") == []
    assert (
        named(chart("gateway.pdb.enabled=true"), "PodDisruptionBudget", "rolegate-gateway")["spec"][
            "maxUnavailable"
        ]
        == 1
    )
    percent = chart("gateway.pdb.enabled=true", "gateway.pdb.maxUnavailable=25%")
    assert (
        named(percent, "PodDisruptionBudget", "rolegate-gateway")["spec"]["maxUnavailable"] == "25%"
    )
    docs = chart(values=("pdb-servicemonitor-values.yaml",))
    pdb = named(docs, "PodDisruptionBudget", "rolegate-gateway")["spec"]
    assert (pdb["minAvailable"], "maxUnavailable" in pdb) == (2, False)
    monitor = named(docs, "ServiceMonitor", "rolegate-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    gateway = pods(docs)["gateway"]
    assert gateway["tolerations"][0]["key"] == "dedicated"
    assert gateway["imagePullSecrets"] == [{"name": "regcred"}]


def test_spread_host_network_gateways_roll_one_node_at_a_time(chart: Any) -> None:
    docs = chart(
        "hostNetwork=true",
        "gateway.replicas=3",
        "gateway.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
        ".topologyKey=kubernetes.io/hostname",
    )
    strategy = named(docs, "Deployment", "rolegate-gateway")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }


def test_node_values_reach_the_api_server_on_loopback(chart: Any) -> None:
    docs = chart("apiServer.port=41234", values=("node-values.yaml",))
    specs = pods(docs)
    for component in ("operator", "gateway", "test"):
        spec = specs[component]
        assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
        assert spec["nodeSelector"] == {"kubernetes.io/hostname": "localhost"}
        assert spec["containers"][0]["image"] == "127.0.0.1:5001/rolegate/rolegate:0.1.0"
    for component in ("operator", "gateway"):
        env = {e["name"]: e.get("value") for e in specs[component]["containers"][0]["env"]}
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
            "127.0.0.1",
            "41234",
        )
    assert "0.0.0.0:18081" in deployment_command(docs, "operator")
    # A surge pod would want the old one's port on the same node: the old pod goes first,
    # and with one replica by Recreate, so that `helm install --wait` waits for the new one
    # (helm waits for replicas - maxUnavailable Ready pods: 0 of 1 with maxUnavailable 1).
    strategy = named(docs, "Deployment", "rolegate-gateway")["spec"]["strategy"]
    assert strategy == {"type": "Recreate"}
    test_env = {e["name"]: e["value"] for e in specs["test"]["containers"][0]["env"]}
    assert "KUBERNETES_SERVICE_HOST" not in test_env
    assert test_env["GATEWAY_URLS"].split() == [
        "env:ROLEGATE_GATEWAY",
        f"http://rolegate-gateway.{NS}.svc:80",
    ]  # the Service only: a broken one must fail the test
