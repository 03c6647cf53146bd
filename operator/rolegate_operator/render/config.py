"""From the LLMRoles and Secrets the operator sees to the gateway's config, role by role.

Pure: typed values in, typed values out; no I/O, no kopf, no clock. Each role gets an
:class:`Outcome` (the checks behind its conditions, and its :class:`RoleConfig` when it can
be served). A role with a problem is left out of the config; the other roles are not
affected by it. The client API keys (hashes, read from their Secrets by the caller) go into
the config beside the roles, and change no role's hash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rolegate_gateway import errors, roles
from rolegate_gateway.api import (
    API_VERSION,
    KIND,
    Binding,
    ConditionStatus,
    GatewaysStatus,
    LLMRole,
    LLMRoleSpec,
)
from rolegate_gateway.config import ApiKey, Backend, Credentials, GatewayConfig, RoleConfig
from rolegate_gateway.translators import SUPPORTED_BINDINGS
from rolegate_operator.render import backend, backend_status
from rolegate_operator.render.check import Check

__all__ = ["Check", "Outcome", "RenderMemo", "Rendered", "RoleObject", "SecretKey", "render"]

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
class Outcome:
    """What became of one role: its checks and, when served, its config; for a ``serve:``
    role also its backend's name and ``BackendReady`` check."""

    role: RoleObject
    credentials: Check
    ready: Check
    config: RoleConfig | None = None
    backend: str = ""
    backend_ready: Check | None = None
    serving: str = ""  # the backend in the config, while a rollout keeps the previous one
    #: status.gateways: the gateway replicas serving it (``rolegate_operator.gateways``).
    gateways: GatewaysStatus | None = None
    #: UpstreamReady: the gateway replicas' verdicts on its upstream (served roles only).
    upstream: Check | None = None

    @property
    def shown_backend(self) -> str:
        """``status.backend``: the backend that serves the role's calls."""
        return self.serving or self.backend

    @property
    def endpoint(self) -> str:
        """The upstream base URL the gateway calls, or "" when not served."""
        return self.config.upstream.base_url if self.config else ""


@dataclass(frozen=True, slots=True)
class Rendered:
    """The gateway config (the served roles, by name), every role's outcome, and the
    backends the ``serve:`` roles want (each with every role that owns it)."""

    config: GatewayConfig
    outcomes: tuple[Outcome, ...]
    backends: tuple[backend.Backend, ...] = ()

    @property
    def retained(self) -> frozenset[tuple[str, str]]:
        """(namespace, name) of backends no role wants but some role is still served by,
        until the backend it moves to is available: not to be deleted yet."""
        return frozenset(
            (o.role.namespace, o.serving) for o in self.outcomes if o.serving and o.config
        )


def _false(reason: str, message: str) -> Check:
    return Check(ConditionStatus.FALSE, reason, message)


#: Said of a role whose Secret is a client API key's: its ``apiKey`` is not the role's.
_CLIENT_KEY_SECRET = (
    "; this Secret is labelled rolegate.dev/api-key=true: its apiKey is a client's key, "
    "which is never sent upstream (put the role's key in a Secret of its own)"
)


def _credentials(
    role: LLMRole,
    secrets: Mapping[SecretKey, Mapping[str, str]],
    client_keys: frozenset[SecretKey] = frozenset(),
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
        hint = _CLIENT_KEY_SECRET if (role.metadata.namespace, ref.name) in client_keys else ""
        return _false("KeyMissing", f"{exc}{hint}"), None
    message = f"Secret {where}: {', '.join(k for k in required)} found"
    return Check(ConditionStatus.TRUE, "SecretResolved", message), found


#: What :func:`_resolve` makes of a role: an early outcome (its ``role`` is the view it was
#: made from, replaced by the current one), or (credentials check, config, backend name).
_Resolved = Outcome | tuple[Check, RoleConfig, str]


@dataclass(slots=True)
class RenderMemo:
    """What :func:`render` resolved of each role in the last pass (its validated spec,
    credentials and :class:`RoleConfig`), by (namespace, name), with the inputs it came
    from: the role's uid and generation, its spec, the keys of the Secret it names, and
    whether that Secret is a client API key's. Reused while those are equal (the
    generation moves with every spec change, so a change Python's ``==`` cannot see, such
    as ``true`` to ``1``, is seen), so a pass over 5,000 unchanged roles validates
    none, and their RoleConfig objects (with the wire bytes and hashes cached on them) carry
    over. The caller keeps one between passes; each :func:`render` replaces its entries
    with this pass's roles (a removed role's entry goes). The inputs are compared by value,
    so the raw objects must not be changed in place (the API's watch hands new ones)."""

    entries: dict[tuple[str, str], tuple[tuple[Any, ...], _Resolved]] = field(default_factory=dict)


def _resolve(
    obj: RoleObject,
    secrets: Mapping[SecretKey, Mapping[str, str]],
    client_keys: frozenset[SecretKey],
) -> _Resolved:
    """The part of a role's outcome that depends on its spec and its Secret only."""
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
    serve = role.spec.serve
    name = backend.backend_name(role.spec.binding, role.spec.model, serve) if serve else ""
    creds_check, credentials = _credentials(role, secrets, client_keys)
    if credentials is None:  # its backend (if any) keeps running: a Secret may come back
        message = f"left out of the gateway config: {creds_check.message}"
        return Outcome(obj, creds_check, _false("CredentialsNotResolved", message), backend=name)
    try:
        ref = Backend(namespace=obj.namespace, service=name) if name else None
        config = roles.role_config(role, credentials, backend=ref)
    except ValueError as exc:  # pydantic's ValidationError included
        return Outcome(obj, creds_check, _false("InvalidSpec", str(exc)))
    return creds_check, config, name


def _outcome(
    obj: RoleObject,
    resolved: _Resolved,
    states: Mapping[tuple[str, str], backend_status.BackendState] | None,
    previous: Mapping[str, RoleConfig],
    *,
    served_check: Check,
) -> Outcome:
    if isinstance(resolved, Outcome):
        return resolved if resolved.role is obj else dataclasses.replace(resolved, role=obj)
    creds_check, config, name = resolved
    if not name:
        return Outcome(obj, creds_check, served_check, config)
    message = served_check.message
    if states is None:  # the backends could not be read: the role stays as it is served
        before = previous.get(obj.name)
        kept = before if before is not None and before.upstream.backend is not None else None
        unknown = Check(ConditionStatus.UNKNOWN, "BackendUnknown", "the backends could not be read")
        return Outcome(obj, creds_check, unknown, kept, backend=name)
    check = backend_status.backend_check(
        name, states.get((obj.namespace, name), backend_status.BackendState())
    )
    ready = Check(ConditionStatus.TRUE, "Served", f"{message}; {check.message}")
    if check.status is not ConditionStatus.TRUE:
        held = _rollout(obj, name, states, previous.get(obj.name), config)
        if held is not None:
            old, config = held
            ready = _false(
                "RollingOut",
                f"still served by backend {old} (the previous spec) until backend {name} "
                f"is available: {check.reason}: {check.message}",
            )
            return Outcome(
                obj, creds_check, ready, config, backend=name, backend_ready=check, serving=old
            )
        ready = _false(
            "BackendNotReady",
            f"in the gateway config, but no pod of the backend serves yet: {check.reason}: "
            f"{check.message}",
        )
    return Outcome(obj, creds_check, ready, config, backend=name, backend_ready=check)


def _rollout(
    obj: RoleObject,
    name: str,
    states: Mapping[tuple[str, str], backend_status.BackendState],
    before: RoleConfig | None,
    config: RoleConfig,
) -> tuple[str, RoleConfig] | None:
    """While a role's new backend ``name`` is not available and the backend the gateway
    serves it from (``before``, its role in the live config) still exists: that backend and
    the role as served from it (its upstream as before, the new limits), so a rebind never
    leaves the role without a model server (nor switches it to one that cannot serve yet
    because the old one had a bad moment). None when there is nothing to hold on to."""
    old = before.upstream.backend if before is not None else None
    if before is None or old is None or old.service == name or old.namespace != obj.namespace:
        return None
    state = states.get((obj.namespace, old.service))
    if state is None or state.deployment is None:
        return None
    return old.service, RoleConfig(
        name=config.name, namespace=config.namespace, upstream=before.upstream, limits=config.limits
    )


def _replicas(role: RoleObject) -> int:
    serve = LLMRoleSpec.model_validate(role.spec).serve
    return serve.replicas if serve is not None else 0


def _backends(outcomes: Sequence[Outcome]) -> tuple[backend.Backend, ...]:
    """The backends the valid ``serve:`` roles want (served or waiting for their Secret),
    each owned by all of its roles."""
    wanted: dict[tuple[str, str], backend.Backend] = {}
    for outcome in outcomes:
        if not outcome.backend:
            continue
        role = outcome.role
        key = (role.namespace, outcome.backend)
        held = wanted.get(key)
        if held is None:
            spec = LLMRoleSpec.model_validate(role.spec)  # valid: it has a backend name
            assert spec.serve is not None
            held = backend.Backend(
                namespace=role.namespace,
                name=outcome.backend,
                binding=spec.binding,
                model=spec.model,
                serve=spec.serve,
            )
        owner = backend.Owner(role.name, role.uid)
        replicas = max(held.serve.replicas, _replicas(role))  # not part of the name
        serve = held.serve.model_copy(update={"replicas": replicas})
        wanted[key] = dataclasses.replace(held, serve=serve, owners=(*held.owners, owner))
    return tuple(wanted[k] for k in sorted(wanted))


def render(
    objects: Iterable[RoleObject],
    secrets: Mapping[SecretKey, Mapping[str, str]],
    *,
    config_secret: str,
    backends: Mapping[tuple[str, str], backend_status.BackendState] | None = None,
    previous: GatewayConfig | None = None,
    api_keys: Iterable[ApiKey] = (),
    memo: RenderMemo | None = None,
) -> Rendered:
    """The gateway config for ``objects``, the outcome of each role and the backends wanted.

    ``secrets`` maps (namespace, name) to a Secret's decoded keys (only those in
    ``rolegate_gateway.roles.SECRET_KEYS`` are needed). ``config_secret`` names the config
    Secret in messages. ``previous`` is the config the gateway serves now.

    ``backends`` maps (namespace, backend name) to what the API holds of that backend (for
    ``BackendReady``; absent: not created yet). A ``serve:`` role is in the config as soon
    as it is valid (the gateway answers 503 while no pod is ready) but ``Ready`` only with
    ``BackendReady``; a role moving to a new backend keeps its previous one (as ``previous``
    has it) until the new one is available (``RollingOut``). ``backends`` None: they could
    not be read, so each ``serve:`` role keeps its entry of ``previous`` (``BackendUnknown``).
    Roles sharing a backend may ask for different ``serve.replicas``: the most wins.

    ``api_keys`` are the client API keys (hashes only; see ``rolegate_gateway.apikeys``):
    the config's :attr:`GatewayConfig.api_keys`, sorted by (namespace, name).

    Role names are unique in a gateway: of two roles with one name (in two namespaces) the
    older one owns the name, served or not, and the other reports ``DuplicateRole``; so a
    broken role's clients never reach another team's upstream.

    ``memo``: what the last call resolved (see :class:`RenderMemo`); updated in place.
    """
    keys = tuple(sorted(api_keys, key=lambda k: (k.namespace, k.name)))
    client_keys = frozenset((k.namespace, k.name) for k in keys)
    ordered = sorted(objects, key=lambda o: (o.created, o.namespace, o.name))
    served = {r.name: r for r in previous.roles} if previous is not None else {}
    outcomes: list[Outcome] = []
    owners: dict[str, RoleObject] = {}
    served_check = Check(
        ConditionStatus.TRUE,
        "Served",
        f"served through the gateway config in Secret {config_secret}",
    )
    held = memo.entries if memo is not None else {}
    kept: dict[tuple[str, str], tuple[tuple[Any, ...], _Resolved]] = {}
    for obj in ordered:
        ref = obj.secret_ref()
        # uid and generation first: the API server bumps the generation on every spec
        # change, which also tells ``true`` from ``1`` (equal to Python's ==, not to JSON)
        inputs = (
            obj.uid,
            obj.generation,
            obj.spec,
            secrets.get(ref) if ref else None,
            ref in client_keys,
        )
        entry = held.get((obj.namespace, obj.name))
        if entry is None or entry[0] != inputs:
            entry = (inputs, _resolve(obj, secrets, client_keys))
        kept[obj.namespace, obj.name] = entry
        outcome = _outcome(obj, entry[1], backends, served, served_check=served_check)
        owner = owners.setdefault(obj.name, obj)
        if owner is not obj:
            message = (
                f"role name {obj.name!r} belongs to the older role in namespace "
                f"{owner.namespace!r}; role names are unique per gateway (rename one of them)"
            )
            outcome = Outcome(obj, outcome.credentials, _false("DuplicateRole", message))
        outcomes.append(outcome)
    if memo is not None:
        memo.entries = kept
    configs = sorted((o.config for o in outcomes if o.config), key=lambda c: c.name)
    config = GatewayConfig(roles=tuple(configs), api_keys=keys)
    return Rendered(config, tuple(outcomes), _backends(outcomes))
