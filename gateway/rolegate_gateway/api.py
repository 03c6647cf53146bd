"""The LLMRole API (rolegate.dev/v1alpha1): the one source of the role's schema.

Owns the pydantic models of an LLMRole manifest as a user writes it (camelCase on the
wire, snake_case in Python). The operator generates the CRD in ``crds/`` from these
models; the gateway's manifests loader validates files with them. Cross-field rules live
here as validators (and, mirrored, as CEL rules in the CRD).

Reference: ../shared/DESIGN.md "The LLMRole API".
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "ANTHROPIC_VERSION",
    "API_VERSION",
    "DEFAULT_HOSTS",
    "DEFAULT_SERVE_IMAGES",
    "GROUP",
    "KIND",
    "VERSION",
    "AnthropicSpec",
    "AzureSpec",
    "BedrockSpec",
    "Binding",
    "Condition",
    "ConditionStatus",
    "CredentialsSpec",
    "GatewaysStatus",
    "LLMRole",
    "LLMRoleSpec",
    "LLMRoleStatus",
    "LocalObjectReference",
    "ObjectMeta",
    "QueueSpec",
    "SecretRef",
    "ServeCacheSpec",
    "ServeSpec",
]

GROUP = "rolegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMRole"


class Binding(enum.StrEnum):
    """The provider protocol a role speaks to its upstream (LightRAG's word)."""

    OPENAI = "openai"
    AZURE_OPENAI = "azure_openai"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    OLLAMA = "ollama"
    VLLM = "vllm"


#: The upstream base URL used when ``spec.host`` is empty. Bindings absent here need a host
#: (or ``serve``, or for bedrock a region).
DEFAULT_HOSTS: dict[Binding, str] = {
    Binding.OPENAI: "https://api.openai.com/v1",
    Binding.ANTHROPIC: "https://api.anthropic.com",
}

_SERVED_BINDINGS = frozenset({Binding.VLLM, Binding.OLLAMA})


class _Model(BaseModel):
    """Base of every wire model: camelCase aliases, snake_case attributes, no unknown keys."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class QueueSpec(_Model):
    """Admission limits of the role's queue, in front of its ``maxAsync`` slots."""

    max_size: int = Field(
        1000,
        ge=0,
        description="Requests that may wait for a slot; one more is answered 429. Default 1000.",
    )
    max_wait_seconds: float = Field(
        60.0,
        gt=0,
        description="Seconds a request may wait for a slot before it is answered 429. Default 60.",
    )


class SecretRef(_Model):
    """A Secret in the role's own namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Name of the Secret (a DNS subdomain, as every Secret name is).",
    )


class CredentialsSpec(_Model):
    """Where the role's upstream credentials come from."""

    secret_ref: SecretRef | None = Field(
        None,
        description=(
            "Secret in the same namespace. Keys: apiKey (openai, azure_openai, anthropic, "
            "vllm, ollama); awsAccessKeyId, awsSecretAccessKey, awsSessionToken (bedrock). "
            "Without it: no key, or for bedrock the AWS default credential chain."
        ),
    )


class AzureSpec(_Model):
    """Azure OpenAI specifics: https://learn.microsoft.com/azure/ai-services/openai/reference."""

    api_version: str = Field(
        "2024-10-21", min_length=1, description="The api-version query parameter."
    )
    deployment: str = Field(
        min_length=1, description="The deployment name; replaces the model in the URL path."
    )


#: The ``anthropic-version`` header sent when the role does not set one: the version every
#: Anthropic model accepts sampling parameters under (2026-10-21 refuses temperature and
#: top_p; ../shared/reference/translation.md §0.1).
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicSpec(_Model):
    """Anthropic specifics: https://docs.anthropic.com/en/api/messages."""

    version: str = Field(
        ANTHROPIC_VERSION,
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        description=(
            "The anthropic-version header, a date. Default 2023-06-01. From 2026-10-21 on, "
            "Anthropic refuses temperature and top_p: requests that set them get 400."
        ),
    )
    max_tokens: int = Field(
        4096,
        ge=1,
        description=(
            "max_tokens sent when the request sets neither max_completion_tokens nor "
            "max_tokens (Anthropic requires one). Default 4096; above the model's limit "
            "Anthropic answers 400."
        ),
    )


class BedrockSpec(_Model):
    """AWS Bedrock specifics."""

    region: str = Field(min_length=1, description="AWS region, e.g. us-east-1.")


class ServeCacheSpec(_Model):
    """The model cache volume of a served backend: a PersistentVolumeClaim owned by the
    backend (deleted with it), mounted where the engine keeps models (vllm: ``HF_HOME``
    ``/root/.cache/huggingface``; ollama: ``/root/.ollama``)."""

    size: str = Field("50Gi", description="PersistentVolumeClaim size (Kubernetes quantity).")
    storage_class_name: str = Field("", description="StorageClass; empty for the default.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadWriteOnce",
        description=(
            "The claim's access mode. ReadWriteOnce (default) allows one replica only: "
            "pods on two nodes cannot mount one RWO volume. ReadWriteMany needs a "
            "StorageClass that offers it (NFS, CephFS, EFS, Filestore)."
        ),
    )


class LocalObjectReference(_Model):
    """The name of an object in the role's namespace (core/v1 LocalObjectReference)."""

    name: str = Field(min_length=1, max_length=253, description="The object's name.")


#: The engine images used when ``serve.image`` is empty: pinned, never ``latest``.
DEFAULT_SERVE_IMAGES: dict[Binding, str] = {
    Binding.VLLM: "vllm/vllm-openai:v0.12.0",
    Binding.OLLAMA: "ollama/ollama:0.32.15",
}


class ServeSpec(_Model):
    """A model server the operator runs for the role (vllm and ollama only)."""

    image: str = Field(
        "",
        description=(
            "Container image of the model server. Empty: vllm/vllm-openai:v0.12.0 (vllm) or "
            "ollama/ollama:0.32.15 (ollama). A vllm image must have the vllm CLI on PATH "
            "(the operator runs `vllm serve`); an ollama image the ollama CLI and sh."
        ),
    )
    replicas: int = Field(1, ge=0, description="Pods of the backend. Default 1.")
    gpus: int = Field(
        1,
        ge=0,
        description=(
            "GPUs per pod, set as resources.limits[gpuResource]; > 0 also adds a toleration "
            "of gpuResource's NoSchedule taint and the Recreate rollout strategy; > 1 sets "
            "vllm's --tensor-parallel-size. Default 1."
        ),
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        min_length=1,
        description="Extended resource name of a GPU, e.g. nvidia.com/mig-1g.10gb for a MIG "
        "slice or amd.com/gpu. Default nvidia.com/gpu.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="The pods' nodeSelector (node labels), e.g. nvidia.com/gpu.product: "
        "NVIDIA-H100-80GB-HBM3 or cloud.google.com/gke-accelerator: nvidia-l4.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More tolerations of the pods (core/v1 Toleration), after the automatic "
        "one of gpuResource.",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="The pods' affinity (core/v1 Affinity)."
    )
    runtime_class_name: str = Field(
        "", description="The pods' runtimeClassName, e.g. nvidia; empty: not set (the default)."
    )
    args: list[str] = Field(
        default_factory=list,
        description="More arguments of the model server, after the operator's (vllm only: "
        "e.g. --max-model-len=8192).",
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Environment of the model server container (core/v1 EnvVar), e.g. "
        "HF_TOKEN from a Secret.",
    )
    cache: ServeCacheSpec | None = Field(
        None, description="The model cache volume; without it models live in the pod."
    )
    shm_size: str = Field(
        "8Gi",
        description="Size of /dev/shm (a memory-backed emptyDir; it counts against the pod's "
        "memory). Default 8Gi.",
    )
    startup_seconds: int = Field(
        1800,
        ge=10,
        le=86400,
        description="Seconds a pod may take to download and load the model before its "
        "startup probe fails and it is restarted. Default 1800.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling a private image."
    )

    @model_validator(mode="after")
    def _cache_fits_replicas(self) -> ServeSpec:
        """Mirrored as a CEL rule in the CRD."""
        shared = self.cache is None or self.cache.access_mode == "ReadWriteMany"
        if self.replicas > 1 and not shared:
            raise ValueError(
                "serve.replicas > 1 needs serve.cache.accessMode ReadWriteMany "
                "(one ReadWriteOnce volume cannot be mounted on several nodes)"
            )
        return self


class LLMRoleSpec(_Model):
    """What serves one role: binding, model, concurrency, timeout and credentials."""

    binding: Binding = Field(description="The provider protocol of the upstream.")
    model: str = Field(min_length=1, description="The upstream's model id.")
    host: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description=(
            "Upstream base URL (http or https). openai defaults to https://api.openai.com/v1; "
            "for vllm and ollama without serve it is required, and a URL without a path gets "
            "/v1 appended; for azure_openai it is the resource endpoint "
            "(https://NAME.openai.azure.com)."
        ),
    )
    max_async: int = Field(
        4,
        ge=1,
        description=(
            "Upstream calls this role has in flight at once, at least 1; further requests wait "
            "in the queue. Default 4."
        ),
    )
    timeout_seconds: float = Field(
        180.0,
        gt=0,
        description=(
            "Seconds one upstream call may take (a stream: to its first byte and between "
            "chunks). Default 180."
        ),
    )
    queue: QueueSpec = Field(default_factory=QueueSpec)
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Default request parameters (e.g. temperature); the request's own win.",
    )
    azure: AzureSpec | None = None
    anthropic: AnthropicSpec | None = None
    bedrock: BedrockSpec | None = None
    serve: ServeSpec | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> LLMRoleSpec:
        """Rules across fields; mirrored as CEL rules in the CRD."""
        served = self.binding in _SERVED_BINDINGS
        if self.serve is not None and not served:
            raise ValueError("serve is only allowed with binding vllm or ollama")
        if served and self.serve is None and not self.host:
            raise ValueError(f"host is required for binding {self.binding} without serve")
        if self.binding is Binding.AZURE_OPENAI:
            if self.azure is None:
                raise ValueError("azure.deployment is required for binding azure_openai")
            if not self.host:
                raise ValueError("host (the Azure resource endpoint) is required for azure_openai")
        elif self.azure is not None:
            raise ValueError("azure is only allowed with binding azure_openai")
        if self.binding is not Binding.ANTHROPIC and self.anthropic is not None:
            raise ValueError("anthropic is only allowed with binding anthropic")
        if self.binding is Binding.BEDROCK and self.bedrock is None:
            raise ValueError("bedrock.region is required for binding bedrock")
        if self.binding is not Binding.BEDROCK and self.bedrock is not None:
            raise ValueError("bedrock is only allowed with binding bedrock")
        if "model" in self.options or "stream" in self.options:
            raise ValueError("options may not set model or stream")
        return self


class ConditionStatus(enum.StrEnum):
    """A condition's status, as every Kubernetes condition has it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """One observation of the role (metav1.Condition's shape).

    Types are positive: ``Ready`` (the role is in the gateway's config and, for a serve:
    role, its backend is available; with the operator's --await-gateways, every live gateway
    replica serves it too: reason Served, else RollingOut), ``CredentialsResolved`` (its
    Secret and keys were found) and ``BackendReady`` (serve: roles: the backend's pods are
    available) and ``UpstreamReady`` (the gateway replicas' ``GET /models`` lists the
    role's model: True Reachable; False Unreachable, Unauthorized or ModelNotServed;
    Unknown NotChecked). Reference:
    https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties
    """

    type: str = Field(
        min_length=1,
        max_length=316,
        description="Ready, CredentialsResolved, BackendReady or UpstreamReady.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase cause of the status, e.g. SecretNotFound, KeyMissing, Served.",
    )
    message: str = Field("", max_length=32768, description="What a person can do about it.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339).",
    )
    observed_generation: int = Field(
        0, ge=0, description="The metadata.generation the condition was set from."
    )


class GatewaysStatus(_Model):
    """How many gateway replicas serve the role as the config has it now."""

    serving: int = Field(
        0,
        ge=0,
        description="Live gateway replicas that serve the role's configHash (each replica "
        "reports what it serves in a coordination.k8s.io Lease of its own).",
    )
    total: int = Field(
        0,
        ge=0,
        description="Live gateway replicas: their Leases were renewed within their "
        "leaseDurationSeconds, as the operator saw them; replicas that stopped renewing "
        "(dead) do not count.",
    )


class LLMRoleStatus(_Model):
    """What the operator observed of the role; written by the operator only."""

    observed_generation: int = Field(
        0, ge=0, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, CredentialsResolved, BackendReady for a serve: role, and "
        "UpstreamReady while in the gateway config (the gateway replicas' check that the "
        "upstream lists the model: Reachable, Unreachable, Unauthorized, ModelNotServed; "
        "it does not change routing or Ready).",
    )
    endpoint: str = Field("", description="The upstream base URL the gateway calls.")
    backend: str = Field(
        "",
        description="The backend (Deployment and Service of that name, in the role's "
        "namespace) the operator runs for a serve: role; shared by the roles of one namespace "
        "whose binding, model and serve are the same.",
    )
    config_hash: str = Field(
        "",
        description="Hash of the role as written to the gateway's config (the gateway's "
        "/status shows the same per role); changes with the spec and with rotated keys.",
    )
    gateways: GatewaysStatus | None = Field(
        None,
        description="The gateway replicas serving this role, while it is in the gateway "
        "config. With the operator's --await-gateways, Ready is True only when serving equals "
        "total (and total is not 0); otherwise Ready is False with reason RollingOut.",
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta the gateway reads; everything else is kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"
    generation: int | None = None


class LLMRole(BaseModel):
    """An LLMRole manifest: ``metadata.name`` is the role a client sends as ``model``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    api_version: Literal["rolegate.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LLMRole"]
    metadata: ObjectMeta
    spec: LLMRoleSpec
    status: dict[str, Any] | None = None
