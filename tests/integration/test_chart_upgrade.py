"""The chart's CRD over a release's life, on a control plane of this module's own (the CRD is
cluster-wide): a ``helm upgrade`` from a previous chart version whose CRD lacks an optional
field gives the CRD that field and keeps the existing roles and their status;
``helm uninstall`` keeps the CRD and the roles (``crds.keep``); installing the release
again adopts them.

The "previous version" is made here: a copy of the chart with a lower version whose CRD
template is ``rolegate-operator crd --helm``'s output for the CRD without ``spec.options``.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.k8s.controlplane import CommandError, ControlPlane
from rolegate_operator.crd import crd, helm_template
from tests.fakes import manifests as m
from tests.fixtures.chart import CHART, RELEASE

pytestmark = pytest.mark.cluster

CRD = "llmroles.rolegate.dev"
NS = "rolegate"
STATUS = {
    "observedGeneration": 1,
    "endpoint": "http://127.0.0.1:9/v1",
    "backend": "",  # the CRD's default: a role without serve: has none
    "configHash": "abc123",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Served",
            "message": "served by the gateway",
            "lastTransitionTime": "2026-12-01T00:00:00Z",
            "observedGeneration": 1,
        }
    ],
}


@pytest.fixture(scope="module")
def plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    with ControlPlane(full=False, bin_dir=k8s_bin_dir) as cp:
        cp.kubectl(["create", "namespace", NS])
        yield cp


def previous_chart(tmp: Path) -> Path:
    """A copy of the chart as version 0.0.1, its CRD without ``spec.options``."""
    old = tmp / "rolegate"
    shutil.copytree(CHART, old)
    meta = yaml.safe_load((old / "Chart.yaml").read_text())
    meta.update(version="0.0.1", appVersion="0.0.1")
    (old / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    doc = copy.deepcopy(crd())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    del spec["properties"]["options"]
    spec["x-kubernetes-validations"] = [
        r for r in spec["x-kubernetes-validations"] if "options" not in r["rule"]
    ]
    (old / "templates" / "crds" / f"{CRD}.yaml").write_text(helm_template(doc))
    return old


def spec_fields(plane: ControlPlane) -> set[str]:
    body = json.loads(plane.kubectl(["get", "crd", CRD, "-o", "json"]).stdout)
    schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


def role(plane: ControlPlane, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        plane.kubectl(["get", "llmrole", name, "-o", "json"], namespace=NS).stdout
    )
    return body


def apply(plane: ControlPlane, tmp: Path, doc: dict[str, Any]) -> str:
    path = m.write(tmp / f"{doc['metadata']['name']}.yaml", doc)
    return plane.kubectl(["apply", "-f", str(path)]).stdout


def wait_served(plane: ControlPlane) -> None:
    """Until the API server serves the CRD's current schema (an update takes a moment)."""
    plane.kubectl(["wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s"])


def test_upgrade_uninstall_and_reinstall_keep_the_roles(
    plane: ControlPlane, tmp_path: Path
) -> None:
    old = previous_chart(tmp_path)
    done = plane.helm(["install", RELEASE, str(old)], namespace=NS)
    assert "STATUS: deployed" in done.stdout
    wait_served(plane)
    assert "options" not in spec_fields(plane)

    extract = m.role("extract", namespace=NS, host="http://127.0.0.1:9/v1")
    apply(plane, tmp_path, extract)
    plane.kubectl(
        [
            "patch",
            "llmrole",
            "extract",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": STATUS}),
        ],
        namespace=NS,
    )
    before = role(plane, "extract")
    assert before["status"] == STATUS
    query = m.role(
        "query", namespace=NS, host="http://127.0.0.1:9/v1", options={"temperature": 0.2}
    )
    with pytest.raises(CommandError, match=r'unknown field "spec.options"'):
        apply(plane, tmp_path, query)

    done = plane.helm(["upgrade", RELEASE, str(CHART)], namespace=NS)
    assert "STATUS: deployed" in done.stdout
    wait_served(plane)
    assert "options" in spec_fields(plane)
    labels = json.loads(plane.kubectl(["get", "crd", CRD, "-o", "json"]).stdout)["metadata"][
        "labels"
    ]
    assert labels["helm.sh/chart"] == "rolegate-0.1.0"

    def options_accepted() -> bool:
        return (
            plane.kubectl(
                ["apply", "-f", str(m.write(tmp_path / "query.yaml", query))], check=False
            ).returncode
            == 0
        )

    plane.wait_for("a role with spec.options accepted", options_accepted, timeout_s=30)
    assert role(plane, "query")["spec"]["options"] == {"temperature": 0.2}
    after = role(plane, "extract")
    assert (after["metadata"]["uid"], after["spec"], after["status"]) == (
        before["metadata"]["uid"],
        before["spec"],
        STATUS,
    )

    done = plane.helm(["uninstall", RELEASE], namespace=NS)
    assert f"[CustomResourceDefinition] {CRD}" in done.stdout  # "kept due to the resource policy"
    assert plane.kubectl(["get", "crd", CRD], check=False).returncode == 0
    names = plane.kubectl(["get", "llmroles", "-o", "name"], namespace=NS).stdout.split()
    assert names == ["llmrole.rolegate.dev/extract", "llmrole.rolegate.dev/query"]
    assert plane.kubectl(["get", "deployments", "-o", "name"], namespace=NS).stdout == ""

    done = plane.helm(["install", RELEASE, str(CHART)], namespace=NS)
    assert "STATUS: deployed" in done.stdout
    manifest = plane.helm(["get", "manifest", RELEASE], namespace=NS).stdout
    assert f"name: {CRD}" in manifest
    assert role(plane, "extract")["status"] == STATUS
    assert role(plane, "query")["spec"]["options"] == {"temperature": 0.2}
    plane.helm(["uninstall", RELEASE], namespace=NS)
