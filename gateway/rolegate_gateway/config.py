"""The gateway's configuration: immutable, Kubernetes-free, versioned, hashed.

Owns :class:`GatewayConfig` (every role the gateway serves, credentials resolved) and its
wire format. Config *sources* (the manifests loader, the operator's config Secret) build
one and hand it to ``Runtime.apply``; the runtime never reads manifests or Kubernetes.

A role splits into two parts so a reload can tell what changed:

- :class:`Upstream`: what a call is sent to (binding, model, URL, credentials, options,
  timeout). A change builds a new role wrapper.
- :class:`Limits`: ``maxAsync`` and the queue bounds. A change resizes the role in place.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from rolegate_gateway import errors
from rolegate_gateway.api import Binding

__all__ = ["CONFIG_VERSION", "Credentials", "GatewayConfig", "Limits", "RoleConfig", "Upstream"]

#: The version of the wire format; a gateway refuses a config of another version and keeps
#: its previous one (as Envoy AI Gateway's filterapi does).
CONFIG_VERSION = "rolegate.dev/gateway-config/v1"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Credentials(_Frozen):
    """Resolved upstream credentials. Never rendered anywhere but the config Secret."""

    api_key: SecretStr | None = None
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

    def values(self) -> list[str]:
        """The secret strings held, for scrubbing them out of upstream error text."""
        fields = (
            self.api_key,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            self.aws_session_token,
        )
        return [f.get_secret_value() for f in fields if f is not None and f.get_secret_value()]


class Upstream(_Frozen):
    """Where and how one role's calls go. Changing any field builds a new wrapper."""

    binding: Binding
    model: str
    base_url: str = Field(description="Base URL of the upstream API, without trailing slash.")
    timeout_s: float = Field(gt=0, description="Seconds per call (stream: per gap).")
    options: dict[str, Any] = Field(default_factory=dict)
    credentials: Credentials = Field(default_factory=Credentials)
    azure_api_version: str | None = None
    azure_deployment: str | None = None
    bedrock_region: str | None = None


class Limits(_Frozen):
    """Concurrency and queue bounds of one role. A change resizes the role in place."""

    max_async: int = Field(ge=1, description="Upstream calls in flight at once.")
    queue_max_size: int = Field(ge=0, description="Requests that may wait for a slot.")
    queue_max_wait_s: float = Field(gt=0, description="Seconds a request may wait.")


class RoleConfig(_Frozen):
    """One role as the gateway serves it: ``name`` is what clients send as ``model``."""

    name: str
    namespace: str = "default"
    upstream: Upstream
    limits: Limits

    def wire(self) -> dict[str, Any]:
        """The role as JSON-ready data, credentials in clear (for the config Secret only)."""
        data = self.model_dump(mode="json")
        data["upstream"]["credentials"] = {
            k: v.get_secret_value()
            for k, v in self.upstream.credentials
            if isinstance(v, SecretStr)
        }
        return data

    @functools.cached_property
    def hash(self) -> str:
        """sha256 of the role's wire form, first 16 hex digits: changes when anything of
        the role changes, a rotated key included. It is shown (in /status and the role's
        status) because a real API key has too much entropy to be guessed from it; a
        low-entropy "key" (``EMPTY`` for a local server) could be."""
        return hashlib.sha256(_canonical(self.wire())).hexdigest()[:16]


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class GatewayConfig(_Frozen):
    """Every role of one gateway. Role names are unique across namespaces.

    Raises:
        pydantic.ValidationError: on a duplicate role name or a malformed field.
    """

    version: Literal["rolegate.dev/gateway-config/v1"] = "rolegate.dev/gateway-config/v1"
    roles: tuple[RoleConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        seen: dict[str, str] = {}
        for role in self.roles:
            if role.name in seen:
                first = seen[role.name]
                where = (
                    f"defined twice in namespace {first!r}"
                    if first == role.namespace
                    else f"defined in namespace {first!r} and in namespace {role.namespace!r}"
                )
                raise ValueError(
                    f"duplicate role {role.name!r}: {where}; "
                    "role names must be unique across namespaces"
                )
            seen[role.name] = role.namespace
        return self

    def to_wire(self) -> bytes:
        """The config as canonical JSON bytes, secrets included (for the config Secret only)."""
        data = {"version": self.version, "roles": [role.wire() for role in self.roles]}
        return _canonical(data)

    @classmethod
    def from_wire(cls, raw: bytes) -> GatewayConfig:
        """Parse :meth:`to_wire` output.

        Raises:
            errors.ConfigError: not JSON, another version, or a field fails validation.
        """
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise errors.ConfigError(f"gateway config is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != CONFIG_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise errors.ConfigError(
                f"gateway config version {version!r} is not {CONFIG_VERSION!r}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise errors.ConfigError(errors.describe_validation(exc, "gateway config")) from exc

    @property
    def hash(self) -> str:
        """sha256 of the wire form, first 16 hex digits: changes when anything changes."""
        return hashlib.sha256(self.to_wire()).hexdigest()[:16]

    def secret_values(self) -> list[str]:
        """Every credential string in the config (for scrubbing)."""
        return [v for role in self.roles for v in role.upstream.credentials.values()]
