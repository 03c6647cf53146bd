"""From the LLMRoles and Secrets the operator sees to the gateway's config, role by role.

Pure: typed values in, typed values out; no I/O, no kopf, no clock. Each role gets an
:class:`Outcome` (the checks behind its conditions, and its :class:`RoleConfig` when it can
be served). A role with a problem is left out of the config; the other roles are not
affected by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rolegate_gateway import errors, roles
from rolegate_gateway.api import API_VERSION, KIND, Binding, ConditionStatus, LLMRole
from rolegate_gateway.config import Credentials, GatewayConfig, RoleConfig
from rolegate_gateway.translators import SUPPORTED_BINDINGS

__all__ = ["Check", "Outcome", "Rendered", "RoleObject", "SecretKey", "render"]

#: (namespace, name) of a Secret.
SecretKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RoleObject:
    """One LLMRole as the operator last saw it (raw spec and status, camelCase)."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str  # metadata.creationTimestamp, RFC 3339 (sorts by time)
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    resource_version: str = ""  # metadata.resourceVersion of this view of it

    @property
    def ref(self) -> str:
        """``namespace/name``, for messages."""
        return f"{self.namespace}/{self.name}"

    def secret_ref(self) -> SecretKey | None:
        """The Secret the spec names, if any (read leniently: the spec may be invalid)."""
        creds = self.spec.get("credentials")
        ref = creds.get("secretRef") if isinstance(creds, Mapping) else None
        name = ref.get("name") if isinstance(ref, Mapping) else None
        return (self.namespace, name) if isinstance(name, str) and name else None


@dataclass(frozen=True, slots=True)
class Check:
    """The status, CamelCase reason and message of one condition, before it is timed."""

    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one role: its two checks and, when served, its config."""

    role: RoleObject
    credentials: Check
    ready: Check
    config: RoleConfig | None = None

    @property
    def endpoint(self) -> str:
        """The upstream base URL the gateway calls, or "" when not served."""
        return self.config.upstream.base_url if self.config else ""


@dataclass(frozen=True, slots=True)
class Rendered:
    """The gateway config (the served roles, by name) and every role's outcome."""

    config: GatewayConfig
    outcomes: tuple[Outcome, ...]


def _false(reason: str, message: str) -> Check:
    return Check(ConditionStatus.FALSE, reason, message)


def _credentials(
    role: LLMRole, secrets: Mapping[SecretKey, Mapping[str, str]]
) -> tuple[Check, Credentials | None]:
    ref = role.spec.credentials.secret_ref
    binding = role.spec.binding
    if ref is None:
        message = (
            "no credentials.secretRef: the gateway signs with the AWS default credential "
            "chain (IRSA, the node's role, its environment)"
            if binding is Binding.BEDROCK
            else "no credentials.secretRef: upstream calls carry no key"
        )
        return Check(ConditionStatus.TRUE, "NoSecretRef", message), Credentials()
    where = f"{role.metadata.namespace}/{ref.name}"
    required, _ = roles.required_keys(binding)
    data = secrets.get((role.metadata.namespace, ref.name))
    if data is None:
        keys = " and ".join(required)
        message = f"Secret {where} not found; create it with key {keys}"
        return _false("SecretNotFound", message), None
    try:
        found = roles.credentials_from(binding, data, secret=where)
    except roles.MissingKey as exc:
        return _false("KeyMissing", str(exc)), None
    message = f"Secret {where}: {', '.join(k for k in required)} found"
    return Check(ConditionStatus.TRUE, "SecretResolved", message), found


def _outcome(
    obj: RoleObject,
    secrets: Mapping[SecretKey, Mapping[str, str]],
    *,
    config_secret: str,
) -> Outcome:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": obj.name, "namespace": obj.namespace},
        "spec": dict(obj.spec),
    }
    try:
        role = LLMRole.model_validate(manifest)
    except ValidationError as exc:
        message = errors.describe_validation(exc, f"LLMRole {obj.ref}")
        unknown = Check(ConditionStatus.UNKNOWN, "InvalidSpec", "the spec is invalid")
        return Outcome(obj, unknown, _false("InvalidSpec", message))
    if role.spec.binding not in SUPPORTED_BINDINGS:
        supported = ", ".join(sorted(SUPPORTED_BINDINGS))
        message = f"binding {role.spec.binding} is not served by this gateway yet ({supported} are)"
        check = Check(ConditionStatus.UNKNOWN, "BindingNotSupported", message)
        return Outcome(obj, check, _false("BindingNotSupported", message))
    creds_check, credentials = _credentials(role, secrets)
    if credentials is None:
        message = f"left out of the gateway config: {creds_check.message}"
        return Outcome(obj, creds_check, _false("CredentialsNotResolved", message))
    if role.spec.serve is not None and not role.spec.host:
        message = (
            "serve: backends are not run by this operator version yet; "
            "set spec.host to the model server's URL"
        )
        return Outcome(obj, creds_check, _false("BackendNotSupported", message))
    try:
        config = roles.role_config(role, credentials)
    except ValueError as exc:  # pydantic's ValidationError included
        return Outcome(obj, creds_check, _false("InvalidSpec", str(exc)))
    message = f"served through the gateway config in Secret {config_secret}"
    return Outcome(obj, creds_check, Check(ConditionStatus.TRUE, "Served", message), config)


def render(
    objects: Iterable[RoleObject],
    secrets: Mapping[SecretKey, Mapping[str, str]],
    *,
    config_secret: str,
) -> Rendered:
    """The gateway config for ``objects`` and the outcome of each role.

    ``secrets`` maps (namespace, name) to a Secret's decoded keys (only those in
    ``rolegate_gateway.roles.SECRET_KEYS`` are needed). ``config_secret`` names the config
    Secret in messages. Role names are unique in a gateway: of two roles with one name
    (in two namespaces) the older one owns the name, served or not, and the other reports
    ``DuplicateRole``; so a broken role's clients never reach another team's upstream.
    """
    ordered = sorted(objects, key=lambda o: (o.created, o.namespace, o.name))
    outcomes: list[Outcome] = []
    owners: dict[str, RoleObject] = {}
    for obj in ordered:
        outcome = _outcome(obj, secrets, config_secret=config_secret)
        owner = owners.setdefault(obj.name, obj)
        if owner is not obj:
            message = (
                f"role name {obj.name!r} belongs to the older role in namespace "
                f"{owner.namespace!r}; role names are unique per gateway (rename one of them)"
            )
            outcome = Outcome(obj, outcome.credentials, _false("DuplicateRole", message))
        outcomes.append(outcome)
    configs = sorted((o.config for o in outcomes if o.config), key=lambda c: c.name)
    return Rendered(GatewayConfig(roles=tuple(configs)), tuple(outcomes))
