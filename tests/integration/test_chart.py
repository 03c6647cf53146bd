"""The Helm chart on a real control plane (etcd + kube-apiserver, RBAC on), one for this
module: every ci/*-values.yaml is accepted by the API server (server-side dry run, admission
included); and in each watch mode an installed release grants exactly the permissions its
README documents, and the operator and the gateway, run as local processes with the chart's
command lines and its ServiceAccounts' tokens, serve an applied role with those alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from devstack.k8s.controlplane import ControlPlane
from devstack.poll import wait_until
from devstack.stack import install_crd
from tests.fakes import manifests as m
from tests.fixtures.chart import (
    CHART,
    CI_VALUES,
    README,
    RELEASE,
    ChartProcesses,
    can_i,
    container,
    documented_can_i,
    objects,
    token_kubeconfig,
)
from tests.fixtures.identities import mint

pytestmark = pytest.mark.cluster

OPERATOR: Final = f"{RELEASE}-operator"
GATEWAY: Final = f"{RELEASE}-gateway"
KEY: Final = "sk-CHART-5e1f0c"
NOWHERE: Final = "http://127.0.0.1:9/v1"  # the role is served, never called

#: The Prometheus Operator's ServiceMonitor, reduced to what the API server needs to accept
#: one (ci/pdb-servicemonitor-values.yaml renders one).
SERVICE_MONITOR_CRD: Final = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    """This module's control plane: the LLMRole CRD from crds/ (so every release here
    installs with crds.install=false; test_chart_upgrade.py covers the chart's own CRD) and
    the ServiceMonitor CRD."""
    with ControlPlane(full=False, bin_dir=k8s_bin_dir) as cp:
        install_crd(cp)
        cp.kubectl(["apply", "-f", "-"], input=json.dumps(SERVICE_MONITOR_CRD))
        cp.kubectl(
            ["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com"]
        )
        yield cp


def new_namespace(plane: ControlPlane, stem: str) -> str:
    """A fresh namespace with its ``default`` ServiceAccount (no controller-manager here to
    add it, and pods need it)."""
    name = f"{stem}-{secrets.token_hex(3)}"
    plane.kubectl(["create", "namespace", name])
    plane.kubectl(["create", "serviceaccount", "default"], namespace=name)
    return name


@pytest.mark.parametrize("values", CI_VALUES)
def test_each_ci_values_file_is_accepted_by_the_api_server(
    plane: ControlPlane, values: str
) -> None:
    ns = new_namespace(plane, "dry")
    for watched in ("team-a", "team-b"):  # ci/watch-namespaces-values.yaml's
        if plane.kubectl(["get", "namespace", watched], check=False).returncode != 0:
            plane.kubectl(["create", "namespace", watched])
    args = ["template", RELEASE, str(CHART), "--values", str(CHART / "ci" / values)]
    if values == "node-values.yaml":  # its API server port is a placeholder
        args += ["--set", f"apiServer.port={plane.server.rsplit(':', 1)[1]}"]
    rendered = plane.helm(args, namespace=ns).stdout
    # The test hook's pod runs as the chart's test ServiceAccount, which admission wants to
    # exist, and a dry run creates nothing: create it (`helm test` creates it, a test hook
    # of a lower weight, before the pod).
    tester = f"{RELEASE}-test"
    if any(
        d["kind"] == "ServiceAccount" and d["metadata"]["name"] == tester for d in objects(rendered)
    ):
        plane.kubectl(["create", "serviceaccount", tester], namespace=ns)
    applied = plane.kubectl(
        ["apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-"],
        input=rendered,
    ).stdout
    # "<kind>[.<group>]/<name> serverside-applied (server dry run)", one line per object
    seen = sorted(
        (kind, name)
        for kind, name in re.findall(
            r"^([a-z]+)(?:\.[a-z0-9.-]+)?/(\S+) serverside-applied \(server dry run\)$",
            applied,
            flags=re.M,
        )
    )
    want = sorted((d["kind"].lower(), d["metadata"]["name"]) for d in objects(rendered))
    assert seen == want, applied


# -- RBAC and the operator e2e, per watch mode ------------------------------------------------


def install(plane: ControlPlane, ns: str, *sets: str) -> list[dict[str, Any]]:
    """``helm install rolegate`` in ``ns`` (CRD not installed: the plane has it); returns the
    release's manifest as the API server was given it (``helm get manifest``)."""
    args = ["install", RELEASE, str(CHART), "--set", "crds.install=false"]
    for item in sets:
        args += ["--set", item]
    plane.helm(args, namespace=ns)
    return objects(plane.helm(["get", "manifest", RELEASE], namespace=ns).stdout)


def expect(plane: ControlPlane, namespace: str, account: str, case: str | None) -> None:
    """``can-i --list`` of ``account`` in ``namespace`` is the README's ``case`` block plus
    the rows everyone has (``None``: only those)."""
    documented = documented_can_i(README.read_text())
    want = sorted(documented["everyone"] + (documented[case] if case else []))
    assert can_i(plane, namespace, account) == want, f"{account} in {namespace} ({case})"


def cannot(plane: ControlPlane, namespace: str, account: str, verb: str, what: str) -> None:
    done = plane.kubectl(
        ["auth", "can-i", verb, what, f"--as=system:serviceaccount:{account}"],
        namespace=namespace,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (1, "no"), (
        f"{account} may {verb} {what} in {namespace}"
    )


def ready(plane: ControlPlane, ns: str, name: str) -> tuple[str, str]:
    body = json.loads(plane.kubectl(["get", "llmrole", name, "-o", "json"], namespace=ns).stdout)
    for cond in (body.get("status") or {}).get("conditions", []):
        if cond["type"] == "Ready":
            return cond["status"], cond["reason"]
    return "", ""


def create_test_identity(plane: ControlPlane, docs: list[dict[str, Any]], ns: str) -> None:
    """What ``helm test`` does before its pod: create the test hooks of weight -1, the test
    ServiceAccount and its bindings to the user ClusterRole. ``helm install`` (``docs``, the
    release's manifest) created none of them: no standing grant."""
    tester = f"{RELEASE}-test"
    assert not [d for d in docs if d["metadata"]["name"].startswith(tester)]
    found = plane.kubectl(["get", "serviceaccount", tester], namespace=ns, check=False)
    assert found.returncode != 0, found.stdout
    hooks = objects(plane.helm(["get", "hooks", RELEASE], namespace=ns).stdout)
    identity = [d for d in hooks if d["kind"] != "Pod"]
    assert {d["metadata"]["annotations"]["helm.sh/hook-weight"] for d in identity} == {"-1"}
    assert {d["kind"] for d in identity} >= {"ServiceAccount"}
    plane.kubectl(
        ["apply", "-f", "-"],
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": identity}),
    )


def serve_a_role(
    plane: ControlPlane, docs: list[dict[str, Any]], release_ns: str, role_ns: str, tmp: Path
) -> ChartProcesses:
    """Run the chart's operator and gateway locally as its ServiceAccounts, apply a Secret
    and a role in ``role_ns``, and wait until the role is Ready and listed in /v1/models.
    The gateway checks tokens (the chart's default ``--auth kubernetes``): /v1/models is
    asked with the token of the chart's test ServiceAccount (created here as ``helm test``
    would), which may use the roles of the watched namespaces. Returns the running
    processes (the caller stops them)."""
    procs = ChartProcesses.from_chart(
        docs,
        operator_kubeconfig=token_kubeconfig(
            plane, tmp / "operator.kubeconfig", namespace=release_ns, account=OPERATOR
        ),
        gateway_kubeconfig=token_kubeconfig(
            plane, tmp / "gateway.kubeconfig", namespace=release_ns, account=GATEWAY
        ),
        logs=tmp,
    )
    procs.start()
    try:
        role = f"r-{role_ns}"[:63]
        manifest = m.write(
            tmp / "role.yaml",
            m.secret("llm-creds", namespace=role_ns, apiKey=KEY),
            m.role(
                role,
                namespace=role_ns,
                binding="openai",
                model="gpt-4o-mini",
                host=NOWHERE,
                credentials={"secretRef": {"name": "llm-creds"}},
            ),
        )
        plane.kubectl(["apply", "-f", str(manifest)])

        create_test_identity(plane, docs, release_ns)
        token = mint(plane, namespace=release_ns, account=f"{RELEASE}-test")

        def served() -> bool:
            procs.operator.check_running()
            procs.gateway.check_running()
            return ready(plane, role_ns, role) == ("True", "Served") and role in procs.models(token)

        wait_until(
            served,
            timeout_s=60,
            what=f"{role} Ready and in /v1/models",
            poll_s=0.2,
            tolerate=(OSError, ValueError),
        )
        with pytest.raises(ValueError, match="invalid_api_key"):
            procs.models()  # no token: 401
        for proc in (procs.operator, procs.gateway):
            assert "Forbidden" not in proc.log_text(), proc.log_tail()
    except BaseException:
        procs.stop()
        raise
    return procs


def test_default_release_namespace(plane: ControlPlane, tmp_path: Path) -> None:
    ns = new_namespace(plane, "chart")
    elsewhere = new_namespace(plane, "other")
    docs = install(plane, ns)
    operator, gateway = f"{ns}:{OPERATOR}", f"{ns}:{GATEWAY}"
    expect(plane, ns, operator, "operator-default-release")
    expect(plane, ns, gateway, "gateway-release")
    expect(plane, elsewhere, operator, None)
    expect(plane, elsewhere, gateway, "gateway-elsewhere")
    cannot(plane, ns, gateway, "get", "secret/other")
    cannot(plane, ns, operator, "update", "secret/other")
    cannot(plane, elsewhere, operator, "list", "llmroles.rolegate.dev")
    cannot(plane, "", operator, "list", "namespaces")

    procs = serve_a_role(plane, docs, ns, ns, tmp_path)
    try:
        # The chart's helm test hook, run here with the variables the kubelet would inject
        # for the gateway's Service and the token it would project: it finds the gateway
        # and sees the role.
        hook = objects(plane.helm(["get", "hooks", RELEASE], namespace=ns).stdout)
        [pod] = [d for d in hook if d["kind"] == "Pod"]
        env = {e["name"]: e["value"] for e in container(pod)["env"]}
        projected = tmp_path / "hook-token"
        projected.write_text(mint(plane, namespace=ns, account=f"{RELEASE}-test"))
        env["TOKEN_FILE"] = str(projected)
        host, port = procs.url.removeprefix("http://").split(":")
        done = subprocess.run(
            [sys.executable, "-c", container(pod)["command"][2]],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                **env,
                "ROLEGATE_GATEWAY_SERVICE_HOST": host,
                "ROLEGATE_GATEWAY_SERVICE_PORT": port,
            },
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.fullmatch(
            rf"ok http://127\.0\.0\.1:{port}: /readyz ready, /v1/models \['r-{ns}'\]\n", done.stdout
        ), done.stdout
    finally:
        procs.stop()
    # `helm test` itself, with no kubelet here: its pod is admitted (so its ServiceAccount
    # came first) and never runs, so the test times out; the pod stays for its logs, and
    # Helm deletes the hooks that succeeded before it, the grant included.
    failed = plane.helm(["test", RELEASE, "--timeout", "5s"], namespace=ns, check=False)
    assert failed.returncode != 0
    assert "timed out waiting for the condition" in failed.stderr, failed.stderr
    left = plane.kubectl(["get", "serviceaccount,rolebinding,pod", "-o", "name"], namespace=ns)
    assert [n for n in left.stdout.split() if n.endswith(f"/{RELEASE}-test")] == [
        f"pod/{RELEASE}-test"
    ], left.stdout
    plane.helm(["uninstall", RELEASE], namespace=ns)


def test_watch_namespaces_list(plane: ControlPlane, tmp_path: Path) -> None:
    ns = new_namespace(plane, "chart")
    team_a, team_b = new_namespace(plane, "team-a"), new_namespace(plane, "team-b")
    elsewhere = new_namespace(plane, "other")
    docs = install(plane, ns, f"watchNamespaces={{{team_a},{team_b}}}")
    operator, gateway = f"{ns}:{OPERATOR}", f"{ns}:{GATEWAY}"
    expect(plane, ns, operator, "operator-list-release")
    expect(plane, team_a, operator, "operator-watched")
    expect(plane, team_b, operator, "operator-watched")
    expect(plane, elsewhere, operator, None)
    expect(plane, ns, gateway, "gateway-list-release")
    expect(plane, team_a, gateway, "gateway-watched")
    expect(plane, team_b, gateway, "gateway-watched")
    expect(plane, elsewhere, gateway, "gateway-elsewhere")

    procs = serve_a_role(plane, docs, ns, team_b, tmp_path)
    procs.stop()
    plane.helm(["uninstall", RELEASE], namespace=ns)


def test_all_namespaces(plane: ControlPlane, tmp_path: Path) -> None:
    ns = new_namespace(plane, "chart")
    elsewhere = new_namespace(plane, "anywhere")
    docs = install(plane, ns, "watchNamespaces={*}")
    operator, gateway = f"{ns}:{OPERATOR}", f"{ns}:{GATEWAY}"
    expect(plane, ns, operator, "operator-all-release")
    expect(plane, elsewhere, operator, "operator-watched")
    expect(plane, ns, gateway, "gateway-release")
    expect(plane, elsewhere, gateway, "gateway-watched")
    cannot(plane, "", operator, "list", "namespaces")
    cannot(plane, "", operator, "get", "customresourcedefinitions.apiextensions.k8s.io")

    procs = serve_a_role(plane, docs, ns, elsewhere, tmp_path)
    procs.stop()
    plane.helm(["uninstall", RELEASE], namespace=ns)
    assert plane.kubectl(["get", "clusterrole", f"{OPERATOR}-{ns}"], check=False).returncode != 0
