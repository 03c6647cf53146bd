"""The role runtime: live roles, their wrappers, and hot reload by ``apply(config)``.

Owns :class:`Runtime` (what is served now), :class:`Role` (one role name: its queue, kept
across rebinds, and its current wrapper) and :class:`RoleWrapper` (one role's upstream
side: config, translator factory, upstream auth, metrics, calls in flight).

Reload (``apply``) validates and builds everything new first, then swaps references with
no ``await`` in between, so a request sees either the old or the new config, never a mix:

- unchanged role: untouched;
- only ``maxAsync``/queue bounds changed: the queue is resized in place;
- anything else changed: a new wrapper. Queued requests take it when admitted; calls in
  flight finish on the old one, which *drains*: past its deadline (2 x timeout + 15 s)
  they are cut off with 503. Old and new share the queue, so the role's upstream
  concurrency never exceeds ``maxAsync``;
- removed role: queued requests get 404, calls in flight drain the same way.

A config that fails (e.g. a role whose wrapper cannot be built) is refused whole and the
old one keeps serving (``refuse``); so is any error a config source reports. A role whose
binding this gateway does not serve (a newer operator's) is the exception: that role alone
is left out, shown in /status and ``rolegate_roles_refused``, and the others are served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from rolegate_gateway import errors, translators
from rolegate_gateway.auth import UpstreamAuth
from rolegate_gateway.calls import Call
from rolegate_gateway.config import GatewayConfig, RefusedRole, RoleConfig
from rolegate_gateway.metrics import Metrics, RoleMetrics, role_labels
from rolegate_gateway.queue import RoleQueue
from rolegate_gateway.scrub import Scrubber
from rolegate_gateway.slots import SlotStore

__all__ = ["Call", "ReloadReport", "Role", "RoleWrapper", "Runtime", "public_origin"]

log = logging.getLogger(__name__)


def public_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: no userinfo, path or query, so safe to show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def public_url(url: str) -> str:
    """A URL with userinfo and query string stripped (they may hold credentials)."""
    return public_origin(url) + urlsplit(url).path


class RoleWrapper:
    """The upstream side of one role: built per binding change, retired by a reload."""

    __slots__ = (
        "auth",
        "config",
        "deadline",
        "drain_s",
        "inflight",
        "metrics",
        "origin",
        "scrubber",
        "translator",
    )

    def __init__(
        self,
        config: RoleConfig,
        translator: translators.TranslatorFactory,
        auth: UpstreamAuth,
        metrics: RoleMetrics,
    ) -> None:
        self.config = config
        self.translator = translator  # called once per request
        self.auth = auth
        self.metrics = metrics
        self.origin = public_origin(config.upstream.base_url)
        self.scrubber = Scrubber(config.upstream.credentials.values())
        self.inflight: set[Call] = set()
        self.deadline: float | None = None  # loop time past which calls are cut; None: live
        self.drain_s = 0.0  # seconds granted to calls in flight when retired

    def enter(self, call: Call) -> None:
        """Register a call; on a retired wrapper it starts under the drain deadline."""
        self.inflight.add(call)
        if self.deadline is not None:
            call.cap = self.deadline
            call.drained = True

    def leave(self, call: Call) -> None:
        """Unregister a finished call."""
        self.inflight.discard(call)

    def retire(self, now: float, *, grace_s: float) -> None:
        """Start draining: calls in flight may run 2 x timeout + ``grace_s`` seconds more."""
        self.drain_s = 2 * self.config.upstream.timeout_s + grace_s
        self.deadline = now + self.drain_s
        for call in self.inflight:
            call.cap = self.deadline
            call.drained = True
            if call.due is not None:
                call.limit(call.due)  # now capped by the drain deadline

    def scrub(self, data: bytes) -> bytes:
        """``data`` (an upstream's error body) with this role's credentials removed: raw,
        percent-, JSON-, base64- or hex-encoded, or masked (see :mod:`rolegate_gateway.scrub`).
        """
        return self.scrubber.scrub(data)


class Role:
    """One role name: its queue (kept across rebinds) and its current wrapper."""

    __slots__ = ("config", "queue", "wrapper")

    def __init__(
        self, config: RoleConfig, wrapper: RoleWrapper, slots: SlotStore | None = None
    ) -> None:
        """``slots``: the concurrency store that holds ``maxAsync`` across replicas."""
        self.config = config
        self.queue = RoleQueue(config.limits, slots.for_role(config.name) if slots else None)
        self.wrapper = wrapper


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What one reload did; the last one is shown in /status."""

    outcome: str  # applied | unchanged | refused
    at: str  # ISO 8601 UTC
    config_hash: str | None = None
    source: str | None = None
    error: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rebound: tuple[str, ...] = ()
    resized: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready with camelCase keys, as the rest of /status; empty fields left out."""
        return {_camel(k): v for k, v in dataclasses.asdict(self).items() if v not in (None, ())}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class _Plan:
    added: dict[str, RoleWrapper] = field(default_factory=dict)
    rebound: dict[str, RoleWrapper] = field(default_factory=dict)
    resized: list[RoleConfig] = field(default_factory=list)


class Runtime:
    """Every role the gateway serves now, and the reload that changes them.

    Not thread-safe: call everything on the event loop's thread.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        drain_grace_s: float = 15.0,
        slots: SlotStore | None = None,
    ) -> None:
        """``drain_grace_s``: seconds added to 2 x timeoutSeconds to give a retired wrapper's
        calls in flight before they are cut off with 503. ``slots``: the concurrency store
        (``--concurrency-store``); None: each replica enforces ``maxAsync`` alone."""
        self.registry = registry or CollectorRegistry()
        self.drain_grace_s = drain_grace_s
        self.slots = slots
        self.metrics = Metrics(self.registry, self._queues)
        self.roles: dict[str, Role] = {}
        self.config: GatewayConfig | None = None
        self.config_hash: str | None = None
        self.last_reload: ReloadReport | None = None
        self.applied_at: str | None = None
        self._draining: dict[str, Role] = {}  # removed roles with calls still in flight
        self._retired: list[RoleWrapper] = []
        self.accepting = True
        self.source_error: str | None = None  # why the config source is down, if it is
        self.source_since: str | None = None
        self.refused: dict[str, RefusedRole] = {}  # roles of the config not served
        #: Called with each config once it is applied (the app's backends follow it).
        self.listeners: list[Callable[[GatewayConfig], None]] = []

    # -- lookups (request path) -------------------------------------------------------

    def role(self, name: str) -> Role:
        """The live role ``name``.

        Raises:
            errors.RoleNotFound: no such role; the message lists the known ones.
            errors.RoleNotServed: the config has the role, but this gateway cannot serve
                its binding.
        """
        role = self.roles.get(name)
        if role is None:
            refused = self.refused.get(name)
            if refused is not None:
                raise errors.RoleNotServed(name, refused.reason)
            raise errors.RoleNotFound(name, list(self.roles))
        return role

    @property
    def ready(self) -> bool:
        """True once a config has been applied, until shutdown begins."""
        return self.config is not None and self.accepting

    # -- reload -------------------------------------------------------------------------

    def apply(self, config: GatewayConfig) -> ReloadReport:
        """Serve ``config``, changing only roles that differ (see the module docstring).

        Never raises for a bad config: it is refused, reported and the old one kept.
        """
        config_hash = config.hash
        if config_hash == self.config_hash:
            return self._report(ReloadReport("unchanged", _now(), config_hash))
        plan = _Plan()
        refused = {r.name: r for r in config.refused}
        try:
            self._plan(config, plan, refused)
        except errors.ConfigError as exc:
            live = {role_labels(role.config) for role in self.roles.values()}
            for wrapper in [*plan.added.values(), *plan.rebound.values()]:
                labels = role_labels(wrapper.config)
                if labels not in live:
                    self.metrics.retire(labels)  # never served: no series of it remains
            self.refuse(str(exc), source="apply")
            return self.last_reload  # type: ignore[return-value]

        now = asyncio.get_running_loop().time()
        roles: dict[str, Role] = {}
        for rc in config.roles:
            if rc.name in refused:
                continue
            role = self.roles.get(rc.name)
            if rc.name in plan.added:
                role = self._draining.pop(rc.name, None)
                if role is None:
                    role = Role(rc, plan.added[rc.name], self.slots)
                else:  # removed, still draining, now back: keep its queue and slots
                    self._retire(role.wrapper, now)
                    role.wrapper = plan.added[rc.name]
                    role.queue.reopen()
            elif rc.name in plan.rebound:
                assert role is not None
                self._retire(role.wrapper, now)
                role.wrapper = plan.rebound[rc.name]
            assert role is not None
            if role.config.limits != rc.limits:
                role.queue.resize(rc.limits)
            role.config = rc
            roles[rc.name] = role
        removed = [name for name in self.roles if name not in roles]
        for name in removed:
            old = self.roles[name]
            old.queue.close(errors.RoleNotFound(name, list(roles)))
            self._retire(old.wrapper, now)
            self._draining[name] = old
        self.roles = roles
        self.refused = refused
        self.metrics.refused_roles(list(refused.values()))
        if refused:
            log.warning("roles not served (binding unknown to this gateway): %s", sorted(refused))
        self.config = config
        self.config_hash = config_hash
        self.applied_at = _now()
        self.prune()
        self.metrics.config_applied(config_hash, len(roles))
        for listener in self.listeners:
            try:
                listener(config)
            except Exception:  # a listener's bug must not undo or refuse the reload
                log.exception("a listener of config %s failed", config_hash)
        report = ReloadReport(
            "applied",
            self.applied_at,
            config_hash,
            added=tuple(plan.added),
            removed=tuple(removed),
            rebound=tuple(plan.rebound),
            resized=tuple(rc.name for rc in plan.resized),
        )
        log.info(
            "config %s applied: %d roles (added %s, removed %s, rebound %s, resized %s)",
            config_hash,
            len(roles),
            list(report.added),
            list(report.removed),
            list(report.rebound),
            list(report.resized),
            extra={"config_hash": config_hash},
        )
        return self._report(report)

    def _plan(self, config: GatewayConfig, plan: _Plan, refused: dict[str, RefusedRole]) -> None:
        """Build into ``plan`` the wrappers a config needs, before anything is swapped; a
        role whose binding is not in the registry goes into ``refused`` instead.

        Raises:
            errors.ConfigError: building a role's wrapper failed in any way.
        """
        for rc in config.roles:
            binding = translators.BINDINGS.get(rc.upstream.binding)
            if binding is None:
                reason = translators.unsupported(rc.upstream.binding)
                refused[rc.name] = RefusedRole(
                    name=rc.name, namespace=rc.namespace, binding=rc.upstream.binding, reason=reason
                )
                continue
            current = self.roles.get(rc.name)
            if current is not None and current.config == rc:
                continue
            if (
                current is not None
                and current.config.upstream == rc.upstream
                and current.config.namespace == rc.namespace
            ):
                plan.resized.append(rc)
                continue
            try:
                factory = binding.translators(rc.upstream, role=rc.name)
                auth = binding.auth(rc.upstream, role=rc.name)
                wrapper = RoleWrapper(rc, factory, auth, self.metrics.for_role(rc))
            except errors.ConfigError as exc:
                raise errors.ConfigError(f"role {rc.namespace}/{rc.name}: {exc}") from exc
            except Exception as exc:  # a bug, or a value nothing validated: refuse, keep serving
                # the exception's text is left out: it may quote a value, a key among them
                log.debug("building role %s failed", rc.name, exc_info=True)
                raise errors.ConfigError(
                    f"role {rc.namespace}/{rc.name}: its wrapper could not be built "
                    f"({type(exc).__name__})"
                ) from exc
            (plan.rebound if current is not None else plan.added)[rc.name] = wrapper

    def _retire(self, wrapper: RoleWrapper, now: float) -> None:
        if wrapper.deadline is not None:  # already draining (a removed role come back)
            return
        wrapper.retire(now, grace_s=self.drain_grace_s)
        self._retired.append(wrapper)

    def prune(self) -> None:
        """Forget retired wrappers whose calls have all finished, and their metric series
        when no live role has the same labels (a removed or relabelled role's series go)."""
        live = {role_labels(role.config) for role in self.roles.values()}
        drained = [w for w in self._retired if not w.inflight]
        self._retired = [w for w in self._retired if w.inflight]
        draining = {role_labels(w.config) for w in self._retired}
        for wrapper in drained:
            labels = role_labels(wrapper.config)
            if labels not in live and labels not in draining:
                self.metrics.retire(labels)
        for name in [n for n, r in self._draining.items() if not r.queue.running]:
            del self._draining[name]

    def refuse(self, reason: str, *, source: str) -> None:
        """Record a config that was refused; the one being served stays."""
        log.error(
            "config refused, keeping %s: %s", self.config_hash, reason, extra={"source": source}
        )
        self._report(ReloadReport("refused", _now(), self.config_hash, source, reason))

    def source_failed(self, reason: str) -> None:
        """Record that the config source is down (shown in /readyz and /status)."""
        if self.source_error is None:
            self.source_since = _now()
        self.source_error = reason

    def source_restarted(self) -> None:
        """The config source runs again."""
        self.source_error = self.source_since = None

    def _report(self, report: ReloadReport) -> ReloadReport:
        self.last_reload = report
        self.metrics.reloads.labels(report.outcome).inc()
        return report

    def close(self) -> None:
        """Stop admitting: every queued and later request gets 503."""
        self.accepting = False
        for role in self.roles.values():
            role.queue.close(errors.Draining("the gateway is shutting down"))

    # -- introspection ------------------------------------------------------------------

    def _queues(self) -> Iterator[tuple[RoleConfig, RoleQueue]]:
        for role in self.roles.values():
            yield role.config, role.queue

    def status(self) -> dict[str, Any]:
        """The /status document. Holds no credential: fields are picked, never dumped."""
        self.prune()
        roles = {}
        for name, role in self.roles.items():
            up = role.config.upstream
            roles[name] = {
                "namespace": role.config.namespace,
                "configHash": role.config.hash,
                "binding": str(up.binding),
                "model": up.model,
                "host": public_url(up.base_url),
                "maxAsync": role.config.limits.max_async,
                "timeoutSeconds": up.timeout_s,
                "queue": {
                    "maxSize": role.config.limits.queue_max_size,
                    "maxWaitSeconds": role.config.limits.queue_max_wait_s,
                    **role.queue.stats(),
                },
            }
        draining = [
            {
                "role": w.config.name,
                "binding": str(w.config.upstream.binding),
                "model": w.config.upstream.model,
                "inFlight": len(w.inflight),
            }
            for w in self._retired
        ]
        refused = {
            name: {"namespace": r.namespace, "binding": r.binding, "reason": r.reason}
            for name, r in self.refused.items()
        }
        return {
            "ready": self.ready,
            "config": {"hash": self.config_hash, "appliedAt": self.applied_at},
            "lastReload": self.last_reload.as_dict() if self.last_reload else None,
            "configSource": {
                "up": self.source_error is None,
                "error": self.source_error,
                "since": self.source_since,
            },
            "roles": roles,
            "refusedRoles": refused,
            "draining": draining,
            "concurrency": self.slots.status() if self.slots else {"mode": "local"},
        }
