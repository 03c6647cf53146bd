"""The generated LLMRole CRD on a real kube-apiserver, as a user meets it through kubectl:
what is accepted and defaulted, what is refused and with which words, the columns, the short
name, ``kubectl explain`` and the status subresource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rolegate_gateway.api import LLMRoleSpec
from tests.fixtures.cluster import Kubectl
from tests.llmrole_cases import ACCEPTED, REFUSED, Refused, manifest, pruned

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
READY = {
    "type": "Ready",
    "status": "False",
    "reason": "SecretNotFound",
    "message": 'Secret "creds" not found',
    "lastTransitionTime": "2026-01-02T03:04:05Z",
}


def _apply(kubectl: Kubectl, doc: dict[str, Any], *, check: bool = True) -> Any:
    return kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)


def _patch_status(
    kubectl: Kubectl, name: str, status: dict[str, Any], *, check: bool = True
) -> Any:
    return kubectl(
        "patch",
        "llmrole",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        check=check,
    )


def _get(kubectl: Kubectl, name: str) -> dict[str, Any]:
    role: dict[str, Any] = json.loads(kubectl("get", "llmrole", name, "-o", "json").stdout)
    return role


@pytest.mark.usefixtures("llmrole_crd")
def test_a_minimal_role_is_accepted_with_every_default_filled_in(kubectl: Kubectl) -> None:
    _apply(kubectl, manifest("extract", {"binding": "openai", "model": "gpt-4o-mini"}))
    assert _get(kubectl, "extract")["spec"] == {
        "binding": "openai",
        "model": "gpt-4o-mini",
        "maxAsync": 4,
        "timeoutSeconds": 180,
        "queue": {"maxSize": 1000, "maxWaitSeconds": 60},
        "credentials": {},
    }


@pytest.mark.usefixtures("llmrole_crd")
def test_nested_defaults_of_serve_azure_and_a_partial_queue(kubectl: Kubectl) -> None:
    _apply(
        kubectl,
        manifest(
            "local",
            {
                "binding": "vllm",
                "model": "m",
                "queue": {"maxSize": 5},
                "serve": {"image": "vllm/vllm-openai:v0.9", "cache": {}},
            },
        ),
    )
    _apply(kubectl, manifest("azure", ACCEPTED["azure"]))
    local = _get(kubectl, "local")["spec"]
    assert local["queue"] == {"maxSize": 5, "maxWaitSeconds": 60}
    assert local["serve"] == {
        "image": "vllm/vllm-openai:v0.9",
        "replicas": 1,
        "gpus": 1,
        "gpuResource": "nvidia.com/gpu",
        "runtimeClassName": "",
        "cache": {"size": "50Gi", "storageClassName": "", "accessMode": "ReadWriteOnce"},
        "shmSize": "8Gi",
        "startupSeconds": 1800,
    }
    assert _get(kubectl, "azure")["spec"]["azure"] == {
        "deployment": "gpt4o",
        "apiVersion": "2024-10-21",
    }


@pytest.mark.usefixtures("llmrole_crd")
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_roles_are_stored_as_the_gateway_reads_them(kubectl: Kubectl, case: str) -> None:
    _apply(kubectl, manifest(case, ACCEPTED[case]))
    stored = _get(kubectl, case)["spec"]
    model = LLMRoleSpec.model_validate(ACCEPTED[case]).model_dump(by_alias=True, mode="json")
    assert pruned(stored) == pruned(model)


@pytest.mark.usefixtures("llmrole_crd")
@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_invalid_roles_are_refused_with_a_readable_message(kubectl: Kubectl, case: Refused) -> None:
    refused = _apply(kubectl, manifest(case.name, case.spec), check=False)
    assert refused.returncode != 0
    assert case.apiserver in refused.stderr
    assert kubectl("get", "llmroles", "-o", "name").stdout == ""


@pytest.mark.usefixtures("llmrole_crd")
def test_the_examples_apply_as_the_readme_says(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(EXAMPLES / "lightrag"))
    rows = [line.split()[:4] for line in kubectl("get", "llmr", "--no-headers").stdout.splitlines()]
    assert rows == [
        ["embed", "openai", "text-embedding-3-small", "16"],
        ["extract", "openai", "gpt-4o-mini", "8"],
        ["keyword", "openai", "gpt-4o-mini", "4"],
        ["query", "openai", "gpt-4o", "4"],
        ["vlm", "openai", "gpt-4o", "2"],
    ]


@pytest.mark.usefixtures("llmrole_crd")
def test_the_gpu_examples_are_accepted_by_the_api_server(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(EXAMPLES / "gpu"))
    rows = [line.split()[:3] for line in kubectl("get", "llmr", "--no-headers").stdout.splitlines()]
    assert rows == [
        ["embed", "ollama", "nomic-embed-text"],
        ["extract", "vllm", "Qwen/Qwen2.5-7B-Instruct"],
        ["keyword", "vllm", "Qwen/Qwen2.5-7B-Instruct"],
        ["query", "vllm", "Qwen/Qwen2.5-7B-Instruct"],
        ["vlm", "vllm", "Qwen/Qwen2.5-VL-7B-Instruct"],
    ]


@pytest.mark.usefixtures("llmrole_crd")
def test_get_shows_the_columns_the_short_name_and_the_category(kubectl: Kubectl) -> None:
    _apply(kubectl, manifest("extract", {"binding": "openai", "model": "gpt-4o-mini"}))
    _patch_status(kubectl, "extract", {"conditions": [READY]})
    header, row = kubectl("get", "llmroles").stdout.splitlines()
    # UPSTREAM (UpstreamReady's reason) is empty here: no such condition
    assert header.split() == ["NAME", "BINDING", "MODEL", "MAXASYNC", "READY", "UPSTREAM", "AGE"]
    assert row.split()[:5] == ["extract", "openai", "gpt-4o-mini", "4", "False"]
    header, row = kubectl("get", "llmr", "-o", "wide").stdout.splitlines()
    assert header.split() == [
        "NAME",
        "BINDING",
        "MODEL",
        "MAXASYNC",
        "READY",
        "UPSTREAM",
        "REASON",
        "BACKEND",
        "AGE",
    ]
    assert row.split()[4:6] == ["False", "SecretNotFound"]
    assert kubectl("get", "rolegate", "-o", "name").stdout.split() == [
        "llmrole.rolegate.dev/extract"
    ]


@pytest.mark.usefixtures("llmrole_crd")
def test_kubectl_explain_shows_the_models_descriptions(kubectl: Kubectl) -> None:
    max_async = kubectl("explain", "llmrole.spec.maxAsync").stdout
    assert "FIELD: maxAsync <integer>" in max_async
    assert "Upstream calls this role has in flight at once, at least 1" in max_async
    role = kubectl("explain", "llmrole").stdout
    assert "metadata.name is the role a client sends as model" in role
    queue = kubectl("explain", "llmrole.spec.queue").stdout
    assert "maxWaitSeconds\t<number>" in queue


@pytest.mark.usefixtures("llmrole_crd")
def test_status_is_written_through_the_subresource_only(kubectl: Kubectl) -> None:
    doc = manifest("extract", {"binding": "openai", "model": "m"})
    _apply(kubectl, {**doc, "status": {"endpoint": "https://evil.example"}})
    assert "status" not in _get(kubectl, "extract")

    status = {"observedGeneration": 1, "endpoint": "https://api.openai.com/v1"}
    _patch_status(kubectl, "extract", {**status, "conditions": [READY]})
    stored = _get(kubectl, "extract")["status"]
    condition = {**READY, "observedGeneration": 0}
    # configHash and backend: the CRD's defaults, filled in by the API server
    assert stored == {**status, "configHash": "", "backend": "", "conditions": [condition]}

    _apply(kubectl, {**doc, "spec": {**doc["spec"], "maxAsync": 2}, "status": {"endpoint": "x"}})
    role = _get(kubectl, "extract")
    assert (role["spec"]["maxAsync"], role["status"]["endpoint"]) == (2, status["endpoint"])


@pytest.mark.usefixtures("llmrole_crd")
def test_a_status_that_breaks_the_schema_is_refused(kubectl: Kubectl) -> None:
    _apply(kubectl, manifest("extract", {"binding": "openai", "model": "m"}))
    bad = {**READY, "status": "Maybe", "reason": "not camel case"}
    refused = _patch_status(kubectl, "extract", {"conditions": [bad]}, check=False)
    assert refused.returncode != 0
    assert 'status.conditions[0].status: Unsupported value: "Maybe"' in refused.stderr
    assert "status.conditions[0].reason: Invalid value" in refused.stderr
