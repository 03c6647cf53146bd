"""The gateway Lease: the wire format of each gateway replica's ``coordination.k8s.io/v1``
Lease, which says which config the replica serves, and the rule that tells a live one.

Owns the Lease's name (:func:`lease_name`), labels (:func:`labels`, :func:`selector`),
annotations (:func:`report_annotations`, read back by :meth:`Report.from_lease`) and liveness
(:class:`Seen`, :func:`observe`). Written by the gateway (``rolegate_gateway.presence``), read
by its peers and by the operator (``rolegate_operator.gateways``: each LLMRole's
``status.gateways`` and ``Ready``). Pure (no I/O, no clock of its own) but for
:func:`default_identity`, which reads the environment and the host name.

One Lease per replica, in the config Secret's namespace:

- name ``<config Secret>-gw-<identity>``; the identity is ``$POD_NAME`` (the chart sets it
  from the pod's name), else ``<hostname>-<pid>`` (:func:`default_identity`), so two
  processes of one machine never share a Lease;
- labels ``app.kubernetes.io/component: gateway`` and ``rolegate.dev/gateway-of: <config
  Secret>`` (the operator and the peers select by them); in a pod, owned by the pod
  (:func:`pod_owner`), so the Lease of a pod that is gone is garbage-collected;
- ``spec.holderIdentity`` (the identity), ``leaseDurationSeconds``, ``renewTime``;
- annotations ``rolegate.dev/config-hash`` (``GatewayConfig.hash`` served now; absent before
  the first config) and ``rolegate.dev/role-hashes`` (compact JSON ``{role: RoleConfig.hash}``
  of every role served now). Annotations hold 256 KiB in all
  (https://kubernetes.io/docs/concepts/overview/working-with-objects/annotations/#syntax-and-character-set):
  JSON over :data:`MAX_ROLE_HASHES_BYTES` is left out and ``rolegate.dev/role-hashes-omitted``
  says so; a reader then takes the replica as serving a role only when its config hash is
  the whole config the reader expects (:meth:`Report.serves`); and ``rolegate.dev/upstream``,
  the roles' upstream health (:mod:`rolegate_gateway.upstream_report`).

Liveness is client-go's leader-election rule
(https://pkg.go.dev/k8s.io/client-go/tools/leaderelection): a Lease is live until
``leaseDurationSeconds`` have passed, by the *reader's* monotonic clock, since the reader saw
its record (holder, duration, renewTime) change. Wall clocks of different machines are never
compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from rolegate_gateway.upstream_report import UPSTREAM_ANNOTATION, UpstreamReport

__all__ = [
    "COMPONENT",
    "COMPONENT_LABEL",
    "CONFIG_HASH_ANNOTATION",
    "GATEWAY_OF_LABEL",
    "MAX_ROLE_HASHES_BYTES",
    "ROLE_HASHES_ANNOTATION",
    "ROLE_HASHES_OMITTED_ANNOTATION",
    "Report",
    "Seen",
    "default_identity",
    "gateway_of",
    "labels",
    "lease_name",
    "observe",
    "pod_owner",
    "report_annotations",
    "selector",
]

COMPONENT_LABEL: Final = "app.kubernetes.io/component"
#: ``app.kubernetes.io/component`` of every gateway Lease.
COMPONENT: Final = "gateway"
#: The label naming the config Secret a gateway serves (:func:`gateway_of`).
GATEWAY_OF_LABEL: Final = "rolegate.dev/gateway-of"
#: ``GatewayConfig.hash`` of the config the replica serves now.
CONFIG_HASH_ANNOTATION: Final = "rolegate.dev/config-hash"
#: Compact JSON ``{role name: RoleConfig.hash}`` of every role the replica serves now.
ROLE_HASHES_ANNOTATION: Final = "rolegate.dev/role-hashes"
#: Present (saying why) instead of :data:`ROLE_HASHES_ANNOTATION` when that would be too big.
ROLE_HASHES_OMITTED_ANNOTATION: Final = "rolegate.dev/role-hashes-omitted"
#: Bytes of role-hashes JSON at most (~2,000 roles); annotations hold 256 KiB in all.
MAX_ROLE_HASHES_BYTES: Final = 200 * 1024

_INVALID = re.compile(r"[^a-z0-9-]+")


def _short(text: str, limit: int) -> str:
    """``text`` if it fits ``limit`` characters, else its head and a hash of the whole."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: limit - 17].rstrip('-.')}-{digest}"


def gateway_of(config_name: str) -> str:
    """The :data:`GATEWAY_OF_LABEL` value for the config Secret ``config_name``: the name,
    shortened with a hash where it exceeds a label value's 63 characters."""
    return _short(config_name, 63)


def labels(config_name: str) -> dict[str, str]:
    """The labels of a gateway Lease for the config Secret ``config_name``."""
    return {COMPONENT_LABEL: COMPONENT, GATEWAY_OF_LABEL: gateway_of(config_name)}


def selector(config_name: str) -> str:
    """The label selector of every gateway Lease of the config Secret ``config_name``."""
    return ",".join(f"{k}={v}" for k, v in labels(config_name).items())


def default_identity() -> str:
    """``$POD_NAME``, else ``<hostname>-<pid>`` (two processes of one machine differ)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def pod_owner() -> list[dict[str, str]]:
    """The Lease's ``ownerReferences``: this pod (``$POD_NAME`` and ``$POD_UID``, which the
    chart sets from the downward API), so the garbage collector deletes the Lease of a pod
    that went without a clean stop (a lost node, a forced delete); [] outside a pod.
    Reference: https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents
    """
    name, uid = os.environ.get("POD_NAME"), os.environ.get("POD_UID")
    if not (name and uid):
        return []
    return [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]


def lease_name(config_name: str, identity: str) -> str:
    """``<config_name>-gw-<identity>`` as an object name (a DNS subdomain): lower case,
    every other character than ``[a-z0-9-]`` made ``-``, shortened with a hash past 253."""
    raw = _INVALID.sub("-", f"{config_name}-gw-{identity}".lower()).strip("-")
    return _short(raw or "gateway", 253)


def report_annotations(
    config_hash: str | None, role_hashes: Mapping[str, str]
) -> dict[str, str | None]:
    """The annotations of a Lease whose replica serves ``config_hash`` (None: no config yet)
    and ``role_hashes``; None values are to be removed (a merge patch's null).

    Role hashes whose JSON exceeds :data:`MAX_ROLE_HASHES_BYTES` are left out and
    :data:`ROLE_HASHES_OMITTED_ANNOTATION` says so instead."""
    encoded = json.dumps(dict(sorted(role_hashes.items())), separators=(",", ":"))
    size = len(encoded.encode())
    if size <= MAX_ROLE_HASHES_BYTES:
        return {
            CONFIG_HASH_ANNOTATION: config_hash,
            ROLE_HASHES_ANNOTATION: encoded,
            ROLE_HASHES_OMITTED_ANNOTATION: None,
        }
    why = (
        f"{len(role_hashes)} roles: {size} bytes of JSON, over {MAX_ROLE_HASHES_BYTES} "
        f"(annotations hold 256 KiB in all); compare {CONFIG_HASH_ANNOTATION} instead"
    )
    return {
        CONFIG_HASH_ANNOTATION: config_hash,
        ROLE_HASHES_ANNOTATION: None,
        ROLE_HASHES_OMITTED_ANNOTATION: why,
    }


@dataclass(frozen=True, slots=True)
class Report:
    """What one gateway Lease says. ``role_hashes`` None: left out (too many roles), so
    only ``config_hash`` tells what is served."""

    name: str
    holder: str
    duration_s: float
    renew_time: str
    config_hash: str | None
    role_hashes: Mapping[str, str] | None
    #: The roles' upstream health (``rolegate.dev/upstream``); None: the replica does not
    #: check upstreams (an older gateway, or checks off).
    upstream: UpstreamReport | None = None

    @property
    def renewal(self) -> tuple[str, float, str]:
        """What changes when the Lease is renewed: (holder, duration, renewTime)."""
        return self.holder, self.duration_s, self.renew_time

    def serves(self, role: str, role_hash: str, *, config_hash: str) -> bool:
        """Whether the replica serves ``role`` as ``role_hash`` (its ``RoleConfig.hash``);
        without role hashes, whether it serves the whole config ``config_hash``."""
        if self.role_hashes is not None:
            return self.role_hashes.get(role) == role_hash
        return self.config_hash == config_hash

    @classmethod
    def from_lease(cls, body: Mapping[str, Any]) -> Report:
        """Read a raw Lease leniently: a missing or invalid duration is 0 (never live),
        unreadable role hashes are none (the replica serves no role)."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        notes = meta.get("annotations") or {}
        try:
            duration_s = max(0.0, float(spec.get("leaseDurationSeconds") or 0))
        except (TypeError, ValueError):
            duration_s = 0.0
        role_hashes: Mapping[str, str] | None = {}
        raw = notes.get(ROLE_HASHES_ANNOTATION)
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                role_hashes = {str(k): str(v) for k, v in parsed.items()}
        elif ROLE_HASHES_OMITTED_ANNOTATION in notes:
            role_hashes = None
        config_hash = notes.get(CONFIG_HASH_ANNOTATION)
        return cls(
            name=str(meta.get("name") or ""),
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=duration_s,
            renew_time=str(spec.get("renewTime") or ""),
            config_hash=str(config_hash) if config_hash else None,
            role_hashes=role_hashes,
            upstream=UpstreamReport.decode(notes.get(UPSTREAM_ANNOTATION)),
        )


@dataclass(frozen=True, slots=True)
class Seen:
    """A :class:`Report` and when (the reader's monotonic seconds) its renewal was seen."""

    report: Report
    observed_s: float

    @property
    def expires_s(self) -> float:
        """Monotonic seconds when the Lease expires unless renewed."""
        return self.observed_s + self.report.duration_s

    def live(self, now_s: float) -> bool:
        """Whether the Lease was live at ``now_s`` (monotonic seconds)."""
        return now_s < self.expires_s


def observe(held: Seen | None, report: Report, now_s: float) -> Seen:
    """``report`` seen at ``now_s`` (monotonic seconds): observed now when its renewal
    differs from ``held``'s (or nothing is held), else still when ``held`` was seen."""
    if held is not None and held.report.renewal == report.renewal:
        return Seen(report, held.observed_s)
    return Seen(report, now_s)
