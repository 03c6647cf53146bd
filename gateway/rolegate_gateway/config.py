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
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from rolegate_gateway import errors
from rolegate_gateway.api import Binding

__all__ = [
    "API_KEY_DATA_KEY",
    "API_KEY_LABEL",
    "CONFIG_VERSION",
    "MIN_API_KEY_CHARS",
    "ROLES_ANNOTATION",
    "ApiKey",
    "Backend",
    "Credentials",
    "GatewayConfig",
    "Limits",
    "RefusedRole",
    "RoleConfig",
    "Upstream",
    "key_digest",
]

#: The version of the wire format; a gateway refuses a config of another version and keeps
#: its previous one (as Envoy AI Gateway's filterapi does).
CONFIG_VERSION = "rolegate.dev/gateway-config/v1"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy (see pydantic), without the values cached from this one's fields (the
        ``functools.cached_property`` ones: wire bytes, hashes), which ``update`` may make
        wrong."""
        copy = super().model_copy(update=update, deep=deep)
        fields = type(self).model_fields
        for name in [k for k in copy.__dict__ if k not in fields]:
            del copy.__dict__[name]
        return copy


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


class Backend(_Frozen):
    """A model server the operator runs for a ``serve:`` role: its Service, whose
    EndpointSlices (label ``kubernetes.io/service-name``) list the ready pods. In a cluster
    the gateway sends each call to one of them, least in-flight calls first; it falls back
    to the upstream's ``base_url`` (the Service's address) when it cannot watch the slices.
    """

    namespace: str = Field(min_length=1)
    service: str = Field(min_length=1)
    port_name: str = Field("http", description="The Service's port name (its slices' port).")


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
    anthropic_version: str | None = None
    anthropic_max_tokens: int | None = Field(default=None, ge=1)
    bedrock_region: str | None = None
    backend: Backend | None = Field(
        default=None,
        description="The operator's backend of a serve: role (base_url is its Service).",
    )


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
        if data["upstream"]["backend"] is None:  # absent, so roles without one hash as before
            del data["upstream"]["backend"]
        data["upstream"]["credentials"] = {
            k: v.get_secret_value()
            for k, v in self.upstream.credentials
            if isinstance(v, SecretStr)
        }
        return data

    @functools.cached_property
    def canonical(self) -> bytes:
        """:meth:`wire` as canonical JSON (sorted keys, no spaces), computed once: the
        role's part of :meth:`GatewayConfig.to_wire` and what :attr:`hash` hashes."""
        return _canonical(self.wire())

    @functools.cached_property
    def hash(self) -> str:
        """sha256 of the role's wire form, first 16 hex digits: changes when anything of
        the role changes, a rotated key included. It is shown (in /status and the role's
        status) because a real API key has too much entropy to be guessed from it; a
        low-entropy "key" (``EMPTY`` for a local server) could be."""
        return hashlib.sha256(self.canonical).hexdigest()[:16]


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


#: The label that makes a Secret a client API key (value ``"true"``).
API_KEY_LABEL = "rolegate.dev/api-key"
#: The key of such a Secret that holds the API key.
API_KEY_DATA_KEY = "apiKey"
#: The annotation of such a Secret naming the roles it may call with ``--auth keys``
#: (``extract,query`` or ``*``); with ``--auth kubernetes`` RBAC decides instead.
ROLES_ANNOTATION = "rolegate.dev/roles"
#: Shorter API keys are left out of the config (a short key can be guessed from its hash).
MIN_API_KEY_CHARS = 16


def key_digest(key: str) -> str:
    """sha256 of an API key (UTF-8), 64 hex digits: what the config holds instead of it.

    A plain hash is enough because keys are long random strings (at least
    :data:`MIN_API_KEY_CHARS`; ``openssl rand -hex 32`` is the documented way to make one).
    """
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(_Frozen):
    """A client API key: a Secret labelled :data:`API_KEY_LABEL`, of which the config holds
    only the hash. Its identity is the Kubernetes user :attr:`user` (RBAC decides what it
    may call), or, with ``--auth keys``, :attr:`roles` does."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="key_digest() of the key.")
    roles: tuple[str, ...] | None = Field(
        default=None,
        description="The roles of the Secret's rolegate.dev/roles annotation ('*': every "
        "role); None: no annotation. Used by --auth keys only.",
    )

    @property
    def user(self) -> str:
        """The Kubernetes user name of this key: ``rolegate:apikey:<namespace>:<name>``."""
        return f"rolegate:apikey:{self.namespace}:{self.name}"


class RefusedRole(_Frozen):
    """A role of the config this gateway cannot serve: its binding is one it does not know
    (a config written by a newer operator). It is left out; the other roles are served."""

    name: str
    namespace: str = "default"
    binding: str
    reason: str


_BINDINGS = frozenset(b.value for b in Binding)


def _unknown_binding(role: object) -> str | None:
    """The binding of a raw role when it is a string no :class:`Binding` has, else None."""
    upstream = role.get("upstream") if isinstance(role, dict) else None
    binding = upstream.get("binding") if isinstance(upstream, dict) else None
    if isinstance(binding, str) and binding not in _BINDINGS:
        return binding
    return None


class GatewayConfig(_Frozen):
    """Every role of one gateway. Role names are unique across namespaces.

    Raises:
        pydantic.ValidationError: on a duplicate role name or a malformed field.
    """

    version: Literal["rolegate.dev/gateway-config/v1"] = "rolegate.dev/gateway-config/v1"
    roles: tuple[RoleConfig, ...] = ()
    refused: tuple[RefusedRole, ...] = Field(
        default=(),
        description="Roles left out on reading: their binding is unknown to this gateway.",
    )
    api_keys: tuple[ApiKey, ...] = Field(
        default=(), description="Client API keys (hashes only), sorted by namespace/name."
    )

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
        """The config as canonical JSON bytes, secrets included (for the config Secret only);
        refused roles are not part of it. Computed once per config (it is immutable), from
        each role's own :attr:`RoleConfig.canonical`, also computed once: the bytes are
        those of ``json.dumps(data, sort_keys=True, separators=(",", ":"))`` of the whole."""
        return self.wire_bytes

    @functools.cached_property
    def wire_bytes(self) -> bytes:
        """:meth:`to_wire`, computed once."""
        # Keys in sorted order, as _canonical writes them: api_keys < roles < version.
        parts = []
        if self.api_keys:  # absent when none, so configs without keys hash as before
            keys = [k.model_dump(mode="json", exclude_none=True) for k in self.api_keys]
            parts.append(b'"api_keys":' + _canonical(keys))
        parts.append(b'"roles":[' + b",".join(role.canonical for role in self.roles) + b"]")
        parts.append(b'"version":' + _canonical(self.version))
        return b"{" + b",".join(parts) + b"}"

    @classmethod
    def from_wire(cls, raw: bytes, *, previous: GatewayConfig | None = None) -> GatewayConfig:
        """Parse :meth:`to_wire` output. A role whose binding this gateway does not know is
        left out into :attr:`refused` (the others are served: an operator newer than the
        gateway must not stop it from serving anything).

        A role whose canonical JSON is byte for byte that of a role of ``previous`` (the
        config served now) is that role, not validated again: one changed role of 5,000 is
        parsed in ~0.3 s rather than ~1 s.

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
        roles = data.get("roles")
        if isinstance(roles, list):
            refused = []
            for role in roles:
                binding = _unknown_binding(role)
                if binding is not None:
                    refused.append(
                        {
                            "name": str(role.get("name")),
                            "namespace": str(role.get("namespace", "default")),
                            "binding": binding[:64],
                            "reason": f"binding {binding[:64]!r} is unknown to this gateway "
                            "version (a newer operator wrote it); upgrade the gateway",
                        }
                    )
            if refused:
                data = {**data, "roles": [r for r in roles if _unknown_binding(r) is None]}
                data["refused"] = refused
        if previous is not None and isinstance(data.get("roles"), list):
            data = {**data, "roles": _reuse(data, previous, raw)}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise errors.ConfigError(errors.describe_validation(exc, "gateway config")) from exc

    @functools.cached_property
    def hash(self) -> str:
        """sha256 of the wire form (and of any refused role), first 16 hex digits: changes
        when anything changes. Computed once per config."""
        digest = hashlib.sha256(self.to_wire())
        for role in self.refused:
            digest.update(_canonical(role.model_dump()))
        return digest.hexdigest()[:16]

    def secret_values(self) -> list[str]:
        """Every credential string in the config (for scrubbing)."""
        return [v for role in self.roles for v in role.upstream.credentials.values()]


def _reuse(data: dict[str, Any], previous: GatewayConfig, raw: bytes) -> list[Any]:
    """``data["roles"]`` (raw, parsed from the wire ``raw``) with each one whose canonical
    JSON is that of a role of ``previous`` replaced by that role (validated and immutable
    already): :func:`_in_place` when ``raw`` is the canonical form of ``data``, else each
    role serialised and compared."""
    known = {role.name: role for role in previous.roles}
    roles = data["roles"]
    in_place = _in_place(data, known, raw)
    if in_place is not None:
        return in_place
    out = []
    for item in roles:
        old = known.get(str(item.get("name"))) if isinstance(item, dict) else None
        out.append(old if old is not None and _canonical(item) == old.canonical else item)
    return out


def _in_place(data: dict[str, Any], known: dict[str, RoleConfig], raw: bytes) -> list[Any] | None:
    """The reuse of :func:`_reuse` without serialising the unchanged roles again, or None
    when ``raw`` is not exactly the canonical form of ``data`` (spaces, other keys, a
    role left out as refused): then nothing found here is used.

    :meth:`GatewayConfig.to_wire` writes ``{"api_keys":[...],"roles":[`` (no api_keys when
    there are none), each role's canonical bytes one comma apart, and
    ``],"version":...}``. Walking ``raw`` so, an unchanged role is its old bytes at its
    place; a changed one is its own canonical bytes there. Only when every part is where
    it belongs, to the last byte, is ``raw`` that form, and each role found the one parsed
    (5,000 roles, one changed: ~0.1 s less than serialising each).
    """
    head = b"{"
    if "api_keys" in data:
        head += b'"api_keys":' + _canonical(data["api_keys"]) + b","
    head += b'"roles":['
    if not raw.startswith(head) or set(data) - {"api_keys", "roles", "version"}:
        return None
    pos, out = len(head), []
    for i, item in enumerate(data["roles"]):
        if i:
            if raw[pos : pos + 1] != b",":
                return None
            pos += 1
        old = known.get(str(item.get("name"))) if isinstance(item, dict) else None
        if old is not None and raw.startswith(old.canonical, pos):
            out.append(old)
            pos += len(old.canonical)
            continue
        text = _canonical(item)
        if not raw.startswith(text, pos):
            return None
        out.append(item)
        pos += len(text)
    tail = b'],"version":' + _canonical(data.get("version")) + b"}"
    return out if raw[pos:] == tail else None
