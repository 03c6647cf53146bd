"""One table of LLMRole manifests, valid and not, for both places that validate them.

tests/unit/test_crd.py runs it through the pydantic model (``rolegate_gateway.api.LLMRole``);
tests/integration/test_crd.py through ``kubectl apply`` against the generated CRD. A case
refused by a CEL rule names the rule (``rolegate_operator.crd.RULES``) and carries the
message both sides must give word for word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Refused:
    """A manifest the API server refuses, and unless ``pydantic`` is None, so does the model.

    ``apiserver``: text in kubectl's stderr; ``pydantic``: text in the ValidationError;
    ``rule``: the name of the CEL rule that refuses it (None: the schema does).
    """

    id: str
    spec: dict[str, Any]
    apiserver: str
    pydantic: str | None
    rule: str | None = None
    name: str = "bad"


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An LLMRole manifest (no namespace: kubectl's -n sets it)."""
    return {
        "apiVersion": "rolegate.dev/v1alpha1",
        "kind": "LLMRole",
        "metadata": {"name": name},
        "spec": spec,
    }


def pruned(value: Any) -> Any:
    """``value`` without None and empty collections (what a CRD leaves absent and pydantic
    fills in), recursively."""
    if isinstance(value, dict):
        kept = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    return value


def _cel(rule: str, spec: dict[str, Any], field: str, message: str, name: str = "bad") -> Refused:
    """A case of a CEL rule: kubectl says ``<field>: <reason>: <message>``, pydantic the same
    message."""
    return Refused(rule, spec, f"{field}: {message}", message, rule=rule, name=name)


_M = {"model": "m"}
_DNS_LABEL = (
    "metadata.name must be a DNS label (at most 63 lowercase letters, digits and '-', "
    "starting and ending with a letter or digit): it is the role clients send as model"
)

ACCEPTED: dict[str, dict[str, Any]] = {
    "openai-minimal": {"binding": "openai", **_M},
    "anthropic": {"binding": "anthropic", **_M, "credentials": {"secretRef": {"name": "creds"}}},
    "vllm-with-host": {"binding": "vllm", **_M, "host": "http://vllm:8000"},
    "vllm-served": {"binding": "vllm", **_M, "serve": {"image": "vllm/vllm-openai:v0.9"}},
    "vllm-served-default-image": {"binding": "vllm", **_M, "serve": {}},
    "vllm-two-replicas-shared-cache": {
        "binding": "vllm",
        **_M,
        "serve": {"replicas": 2, "cache": {"size": "20Gi", "accessMode": "ReadWriteMany"}},
    },
    "ollama-served-with-cache": {
        "binding": "ollama",
        **_M,
        "serve": {"image": "ollama/ollama", "cache": {"size": "20Gi"}, "gpus": 0},
    },
    "azure": {
        "binding": "azure_openai",
        **_M,
        "host": "https://res.openai.azure.com",
        "azure": {"deployment": "gpt4o"},
    },
    "bedrock": {"binding": "bedrock", **_M, "bedrock": {"region": "us-east-1"}},
    "options-free-form": {
        "binding": "openai",
        **_M,
        "options": {"temperature": 0.2, "stop": ["\n"], "response_format": {"type": "json_object"}},
    },
}

REFUSED: list[Refused] = [
    # CEL: the cross-field rules of LLMRoleSpec, word for word.
    _cel(
        "serve-needs-served-binding",
        {"binding": "openai", **_M, "serve": {"image": "x"}},
        "spec.serve: Forbidden",
        "serve is only allowed with binding vllm or ollama",
    ),
    _cel(
        "served-binding-needs-host-or-serve",
        {"binding": "vllm", **_M},
        "spec.host: Required value",
        "host is required for binding vllm without serve",
    ),
    Refused(
        "ollama-needs-host-or-serve",
        {"binding": "ollama", **_M},
        "spec.host: Required value: host is required for binding ollama without serve",
        "host is required for binding ollama without serve",
        rule="served-binding-needs-host-or-serve",
    ),
    _cel(
        "azure-openai-needs-azure",
        {"binding": "azure_openai", **_M, "host": "https://res.openai.azure.com"},
        "spec.azure: Required value",
        "azure.deployment is required for binding azure_openai",
    ),
    _cel(
        "azure-openai-needs-host",
        {"binding": "azure_openai", **_M, "azure": {"deployment": "d"}},
        "spec.host: Required value",
        "host (the Azure resource endpoint) is required for azure_openai",
    ),
    _cel(
        "azure-needs-azure-openai",
        {"binding": "openai", **_M, "azure": {"deployment": "d"}},
        "spec.azure: Forbidden",
        "azure is only allowed with binding azure_openai",
    ),
    _cel(
        "anthropic-block-needs-anthropic",
        {"binding": "bedrock", **_M, "anthropic": {"maxTokens": 10}, "bedrock": {"region": "r"}},
        "spec.anthropic: Forbidden",
        "anthropic is only allowed with binding anthropic",
    ),
    _cel(
        "bedrock-needs-bedrock-block",
        {"binding": "bedrock", **_M},
        "spec.bedrock: Required value",
        "bedrock.region is required for binding bedrock",
    ),
    _cel(
        "bedrock-block-needs-bedrock",
        {"binding": "anthropic", **_M, "bedrock": {"region": "us-east-1"}},
        "spec.bedrock: Forbidden",
        "bedrock is only allowed with binding bedrock",
    ),
    _cel(
        "options-not-model-or-stream",
        {"binding": "openai", **_M, "options": {"model": "other"}},
        "spec.options: Forbidden",
        "options may not set model or stream",
    ),
    Refused(
        "options-not-stream",
        {"binding": "openai", **_M, "options": {"stream": True, "temperature": 1}},
        "spec.options: Forbidden: options may not set model or stream",
        "options may not set model or stream",
        rule="options-not-model-or-stream",
    ),
    # CEL: the role name (the API server itself would allow dots and 253 characters).
    Refused(
        "name-with-dot",
        {"binding": "openai", **_M},
        f'metadata.name: Invalid value: "object": {_DNS_LABEL}',
        "metadata.name",
        rule="name-is-dns-label",
        name="my.role",
    ),
    Refused(
        "name-too-long",
        {"binding": "openai", **_M},
        f'metadata.name: Invalid value: "object": {_DNS_LABEL}',
        "metadata.name",
        rule="name-is-dns-label",
        name="r" * 64,
    ),
    # CEL, the API server's alone: the gateway never reads serve.
    Refused(
        "cache-size-is-quantity",
        {"binding": "vllm", **_M, "serve": {"image": "x", "cache": {"size": "lots"}}},
        'spec.serve.cache.size: Invalid value: "object": '
        "serve.cache.size must be a Kubernetes quantity, e.g. 50Gi",
        None,
        rule="cache-size-is-quantity",
    ),
    Refused(
        "shm-size-is-quantity",
        {"binding": "vllm", **_M, "serve": {"shmSize": "big"}},
        'spec.serve.shmSize: Invalid value: "object": '
        "serve.shmSize must be a Kubernetes quantity, e.g. 8Gi",
        None,
        rule="shm-size-is-quantity",
    ),
    # CEL: the replicas rule of ServeSpec, word for word.
    Refused(
        "cache-fits-replicas",
        {"binding": "vllm", **_M, "serve": {"replicas": 2, "cache": {"size": "20Gi"}}},
        'spec.serve.replicas: Invalid value: "object": serve.replicas > 1 needs '
        "serve.cache.accessMode ReadWriteMany (one ReadWriteOnce volume cannot be mounted on "
        "several nodes)",
        "serve.replicas > 1 needs serve.cache.accessMode ReadWriteMany",
        rule="cache-fits-replicas",
    ),
    # The schema, generated from the model's fields.
    Refused(
        "binding-unknown",
        {"binding": "gemini", **_M},
        'spec.binding: Unsupported value: "gemini": supported values: "openai", '
        '"azure_openai", "anthropic", "bedrock", "ollama", "vllm"',
        "spec.binding\n  Input should be 'openai', 'azure_openai', 'anthropic'",
    ),
    Refused(
        "binding-missing",
        dict(_M),
        "spec.binding: Required value",
        "spec.binding\n  Field required",
    ),
    Refused(
        "model-missing",
        {"binding": "openai"},
        "spec.model: Required value",
        "spec.model\n  Field required",
    ),
    Refused(
        "model-empty",
        {"binding": "openai", "model": ""},
        "spec.model in body should be at least 1 chars long",
        "spec.model\n  String should have at least 1 character",
    ),
    Refused(
        "host-not-http",
        {"binding": "openai", **_M, "host": "ftp://files.example.com"},
        "spec.host in body should match '^https?://",
        "spec.host\n  String should match pattern '^https?://",
    ),
    Refused(
        "max-async-zero",
        {"binding": "openai", **_M, "maxAsync": 0},
        "spec.maxAsync: Invalid value: 0: spec.maxAsync in body should be greater than or "
        "equal to 1",
        "spec.maxAsync\n  Input should be greater than or equal to 1",
    ),
    Refused(
        "max-async-not-integer",
        {"binding": "openai", **_M, "maxAsync": 2.5},
        'spec.maxAsync: Invalid value: "number": spec.maxAsync in body must be of type integer',
        "spec.maxAsync\n  Input should be a valid integer",
    ),
    Refused(
        "timeout-zero",
        {"binding": "openai", **_M, "timeoutSeconds": 0},
        "spec.timeoutSeconds in body should be greater than 0",
        "spec.timeoutSeconds\n  Input should be greater than 0",
    ),
    Refused(
        "queue-max-size-negative",
        {"binding": "openai", **_M, "queue": {"maxSize": -1}},
        "spec.queue.maxSize in body should be greater than or equal to 0",
        "spec.queue.maxSize\n  Input should be greater than or equal to 0",
    ),
    Refused(
        "queue-max-wait-zero",
        {"binding": "openai", **_M, "queue": {"maxWaitSeconds": 0}},
        "spec.queue.maxWaitSeconds in body should be greater than 0",
        "spec.queue.maxWaitSeconds\n  Input should be greater than 0",
    ),
    Refused(
        "secret-name-not-dns",
        {"binding": "openai", **_M, "credentials": {"secretRef": {"name": "My_Creds"}}},
        "spec.credentials.secretRef.name in body should match",
        "spec.credentials.secretRef.name\n  String should match pattern",
    ),
    Refused(
        "azure-deployment-missing",
        {"binding": "azure_openai", **_M, "host": "https://res.openai.azure.com", "azure": {}},
        "spec.azure.deployment: Required value",
        "spec.azure.deployment\n  Field required",
    ),
    Refused(
        "bedrock-region-empty",
        {"binding": "bedrock", **_M, "bedrock": {"region": ""}},
        "spec.bedrock.region in body should be at least 1 chars long",
        "spec.bedrock.region\n  String should have at least 1 character",
    ),
    Refused(
        "serve-startup-too-short",
        {"binding": "vllm", **_M, "serve": {"startupSeconds": 5}},
        "spec.serve.startupSeconds in body should be greater than or equal to 10",
        "spec.serve.startupSeconds\n  Input should be greater than or equal to 10",
    ),
    Refused(
        "serve-cache-access-mode-unknown",
        {"binding": "vllm", **_M, "serve": {"cache": {"accessMode": "ReadOnlyMany"}}},
        'spec.serve.cache.accessMode: Unsupported value: "ReadOnlyMany"',
        "spec.serve.cache.accessMode\n  Input should be 'ReadWriteOnce' or 'ReadWriteMany'",
    ),
    Refused(
        "serve-gpus-negative",
        {"binding": "vllm", **_M, "serve": {"image": "x", "gpus": -1}},
        "spec.serve.gpus in body should be greater than or equal to 0",
        "spec.serve.gpus\n  Input should be greater than or equal to 0",
    ),
    Refused(
        "options-model-not-a-string",
        {"binding": "openai", **_M, "options": {"model": 5}},
        "spec.options.model in body must be of type string",
        "options may not set model or stream",
    ),
    # Unknown fields: kubectl's (default) strict field validation, pydantic's extra="forbid".
    Refused(
        "unknown-field",
        {"binding": "openai", **_M, "maxasync": 2},
        'strict decoding error: unknown field "spec.maxasync"',
        "spec.maxasync\n  Extra inputs are not permitted",
    ),
    Refused(
        "unknown-nested-field",
        {"binding": "openai", **_M, "queue": {"size": 5}},
        'strict decoding error: unknown field "spec.queue.size"',
        "spec.queue.size\n  Extra inputs are not permitted",
    ),
]
