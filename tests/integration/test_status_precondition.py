"""What the API server enforces on a status patch, on the real thing: ``metadata.uid`` in a
merge patch of the status subresource is dropped unchecked, ``metadata.resourceVersion`` is
a precondition (409 Conflict). So the operator's status writes carry the resourceVersion,
and a status rendered for a role never lands on the role re-created with its name."""

from __future__ import annotations

import json
from typing import Any

from devstack.k8s.controlplane import ControlPlane
from rolegate_gateway.kube import api_client
from rolegate_operator.apply import Kube
from tests.fakes import manifests as m
from tests.fixtures.cluster import Kubectl

MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
STATUS: dict[str, Any] = {"observedGeneration": 1, "conditions": [], "endpoint": "http://old"}


def _get(kubectl: Kubectl, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kubectl("get", "llmrole", name, "-o", "json").stdout)
    return body


async def test_the_resource_version_is_enforced_on_status_patches_and_the_uid_is_not(
    cluster: ControlPlane, namespace: str, kubectl: Kubectl, llmrole_crd: str
) -> None:
    role = m.role("extract", host="http://127.0.0.1:9/v1", namespace=namespace)
    kubectl("apply", "-f", "-", input=json.dumps(role))
    first = _get(kubectl, "extract")["metadata"]
    kube = Kube(await api_client(cluster.kubeconfig))
    try:
        # A uid in the patch is not a precondition: a wrong one does not stop the write.
        await kube.custom.patch_namespaced_custom_object_status(
            "rolegate.dev",
            "v1alpha1",
            namespace,
            "llmroles",
            "extract",
            {"metadata": {"uid": "not-its-uid"}, "status": {"endpoint": "http://uid"}},
            **MERGE_PATCH,
        )
        moved = _get(kubectl, "extract")
        assert moved["status"]["endpoint"] == "http://uid"
        assert moved["metadata"]["uid"] == first["uid"]

        # The resourceVersion is one: a stale one is refused, the current one accepted.
        assert (
            await kube.patch_status(
                namespace, "extract", resource_version=first["resourceVersion"], status=STATUS
            )
            is None
        )
        current = moved["metadata"]["resourceVersion"]
        written = await kube.patch_status(
            namespace, "extract", resource_version=current, status=STATUS
        )
        assert written is not None
        assert written != current
        assert _get(kubectl, "extract")["metadata"]["resourceVersion"] == written

        # Deleted and created anew under the same name: a status for the old one never lands.
        kubectl("delete", "llmrole", "extract")
        kubectl("apply", "-f", "-", input=json.dumps(role))
        assert (
            await kube.patch_status(namespace, "extract", resource_version=written, status=STATUS)
            is None
        )
        assert "status" not in _get(kubectl, "extract")
        assert kube.writes["status"] == 1
    finally:
        await kube.api.close()
