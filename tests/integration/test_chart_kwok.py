"""The Helm chart installed with ``--wait`` on the full control plane, whose kwok nodes make
scheduled pods Running and Ready without running them: the Deployments become Available,
on the CPU nodes (the GPU nodes are tainted), for machines where a real node cannot run.

``helm test`` is not run here: a kwok node runs no container, so its test pod would only
ever be marked Running. tests/integration/test_chart.py runs the hook's script against a
live gateway instead.
"""

from __future__ import annotations

import json

import pytest

from devstack.k8s.controlplane import ControlPlane
from tests.fixtures.chart import CHART, RELEASE
from tests.fixtures.cluster import Helm, Kubectl


@pytest.mark.full_cluster
def test_install_wait_makes_both_deployments_available(
    cluster: ControlPlane, namespace: str, helm: Helm, kubectl: Kubectl
) -> None:
    # crds.install=false: the session's full plane is shared, and other tests there may
    # have applied the CRD from crds/ (Helm would refuse to adopt it).
    done = helm(
        "install",
        RELEASE,
        str(CHART),
        "--set",
        "crds.install=false",
        "--set",
        "gateway.replicas=2",
        "--set",
        "gateway.pdb.enabled=true",
        "--wait",
        "--timeout",
        "3m",
        timeout_s=240,
    )
    assert "STATUS: deployed" in done.stdout
    assert f"http://{RELEASE}-gateway.{namespace}.svc:80/v1" in done.stdout  # NOTES.txt

    deployments = json.loads(kubectl("get", "deployments", "-o", "json").stdout)["items"]
    available = {
        d["metadata"]["name"]: (
            d["status"].get("availableReplicas"),
            {c["type"]: c["status"] for c in d["status"]["conditions"]}["Available"],
        )
        for d in deployments
    }
    assert available == {f"{RELEASE}-operator": (1, "True"), f"{RELEASE}-gateway": (2, "True")}

    pods = json.loads(kubectl("get", "pods", "-o", "json").stdout)["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-cpu-"), pod["spec"]["nodeName"]
        assert pod["status"]["phase"] == "Running"
    pdb = json.loads(kubectl("get", "pdb", f"{RELEASE}-gateway", "-o", "json").stdout)
    assert pdb["status"]["currentHealthy"] == 2
    assert pdb["status"]["disruptionsAllowed"] == 1
    endpoints = json.loads(
        kubectl(
            "get",
            "endpointslices",
            "-l",
            f"kubernetes.io/service-name={RELEASE}-gateway",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert sum(len(s.get("endpoints") or []) for s in endpoints) == 2

    helm("uninstall", RELEASE, "--wait", timeout_s=120)
    assert json.loads(kubectl("get", "deployments", "-o", "json").stdout)["items"] == []
