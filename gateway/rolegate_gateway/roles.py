"""From an LLMRole manifest and its Secret's data to a :class:`RoleConfig`.

Shared by every config source: the manifests loader here and the operator's renderer.
Owns the defaults that depend on the binding (upstream URL, which Secret keys are read).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import SecretStr

from rolegate_gateway.api import DEFAULT_HOSTS, AnthropicSpec, Binding, LLMRole
from rolegate_gateway.config import Backend, Credentials, Limits, RoleConfig, Upstream

__all__ = [
    "BACKEND_PORT",
    "SECRET_KEYS",
    "MissingKey",
    "backend_url",
    "base_url",
    "credentials_from",
    "required_keys",
    "role_config",
]

#: Secret keys -> Credentials fields.
_KEY_FIELDS = {
    "apiKey": "api_key",
    "awsAccessKeyId": "aws_access_key_id",
    "awsSecretAccessKey": "aws_secret_access_key",
    "awsSessionToken": "aws_session_token",
}

#: Every Secret key a role may read; a config source needs no other key of a Secret.
SECRET_KEYS = frozenset(_KEY_FIELDS)


class MissingKey(ValueError):
    """A referenced Secret lacks a key the binding needs; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def required_keys(binding: Binding) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (required, optional) Secret keys a binding reads from its ``secretRef``."""
    if binding is Binding.BEDROCK:
        return ("awsAccessKeyId", "awsSecretAccessKey"), ("awsSessionToken",)
    return ("apiKey",), ()


def credentials_from(binding: Binding, data: Mapping[str, str], *, secret: str) -> Credentials:
    """Credentials from a Secret's decoded data (``secret`` names it for the error).

    Raises:
        MissingKey: a required key is absent or empty.
    """
    required, optional = required_keys(binding)
    values: dict[str, SecretStr] = {}
    for key in required:
        if not data.get(key):
            raise MissingKey(key, f"Secret {secret!r} has no key {key!r} (needed by {binding})")
        values[_KEY_FIELDS[key]] = SecretStr(data[key])
    for key in optional:
        if data.get(key):
            values[_KEY_FIELDS[key]] = SecretStr(data[key])
    return Credentials(**values)


def base_url(role: LLMRole) -> str:
    """The upstream base URL of a role, without trailing slash.

    openai-style bindings: ``host`` as given (default per binding); for vllm and ollama a
    host without a path gets ``/v1`` (both serve OpenAI's API there). bedrock: the regional
    bedrock-runtime endpoint.

    Raises:
        ValueError: the binding has no default and the role names no host (a ``serve``
            role outside the operator, which is what fills in the backend's address).
    """
    spec = role.spec
    if spec.host:
        url = spec.host.rstrip("/")
        if spec.binding in (Binding.VLLM, Binding.OLLAMA) and not urlsplit(url).path:
            url += "/v1"
        return url
    if spec.binding is Binding.BEDROCK and spec.bedrock is not None:
        return f"https://bedrock-runtime.{spec.bedrock.region}.amazonaws.com"
    if spec.binding in DEFAULT_HOSTS:
        return DEFAULT_HOSTS[spec.binding]
    raise ValueError(
        f"spec.host is required: binding {spec.binding} has no default upstream, and a serve: "
        "backend is run only by the operator in Kubernetes; set spec.host to the model "
        "server's URL"
    )


#: The port a backend's engine listens on (vllm's default; ollama's OLLAMA_HOST is set to it
#: too, so every backend Service is alike).
BACKEND_PORT = 8000


def backend_url(backend: Backend) -> str:
    """The OpenAI-compatible base URL of a backend's Service (both engines serve ``/v1``)."""
    return f"http://{backend.service}.{backend.namespace}.svc:{BACKEND_PORT}/v1"


def role_config(
    role: LLMRole, credentials: Credentials, *, backend: Backend | None = None
) -> RoleConfig:
    """The gateway's view of one role. A ``backend`` (a served one, from the operator)
    replaces :func:`base_url` with its Service's address (:func:`backend_url`).

    Raises:
        ValueError: see :func:`base_url`.
    """
    spec = role.spec
    anthropic = (spec.anthropic or AnthropicSpec()) if spec.binding is Binding.ANTHROPIC else None
    return RoleConfig(
        name=role.metadata.name,
        namespace=role.metadata.namespace,
        upstream=Upstream(
            binding=spec.binding,
            model=spec.model,
            base_url=backend_url(backend) if backend else base_url(role),
            timeout_s=spec.timeout_seconds,
            options=spec.options,
            credentials=credentials,
            azure_api_version=spec.azure.api_version if spec.azure else None,
            azure_deployment=spec.azure.deployment if spec.azure else None,
            anthropic_version=anthropic.version if anthropic else None,
            anthropic_max_tokens=anthropic.max_tokens if anthropic else None,
            bedrock_region=spec.bedrock.region if spec.bedrock else None,
            backend=backend,
        ),
        limits=Limits(
            max_async=spec.max_async,
            queue_max_size=spec.queue.max_size,
            queue_max_wait_s=spec.queue.max_wait_seconds,
        ),
    )
