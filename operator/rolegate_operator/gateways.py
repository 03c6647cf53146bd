"""The gateway replicas as the operator sees them, and what they mean for each role.

Each gateway replica keeps a Lease saying which config and which role hashes it serves
(:mod:`rolegate_gateway.leases` owns the format). :class:`Gateways` records those of the
config Secret (its namespace, label ``rolegate.dev/gateway-of``) in the store's ``gateways``
section, from kopf's watch events (:meth:`Gateways.event`) and from the fresh list each
resync pass reads (:meth:`Gateways.refresh`, so a restarted operator knows every replica in
its first pass and rewrites no status); says whether an event matters (a replica appeared,
came back or went, or what it serves changed: a mere renewal does not) and when the next
live Lease expires (:meth:`Gateways.due`); and turns the live ones into each served role's
``status.gateways``, its ``UpstreamReady`` (``rolegate_operator.render.upstream``) and,
with ``await_gateways``, its ``Ready`` (:meth:`Gateways.judge`).

A replica with more roles than an annotation holds leaves its role hashes out and reports
only its config hash; the operator keeps the role hashes of the last configs it judged, so
such a replica still counts, per role, as serving what that config holds.

Expiry is judged by the operator's monotonic clock from when it saw a Lease's renewal
change (:func:`rolegate_gateway.leases.observe`), never by comparing ``renewTime`` with the
operator's wall clock; a Lease first seen counts as just renewed (as client-go's leader
election does). Not thread-safe: the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client

from rolegate_gateway import leases
from rolegate_gateway.api import ConditionStatus, GatewaysStatus
from rolegate_gateway.kube import API_ERRORS, answer_json, describe, log_failure, unavailable
from rolegate_operator.apply import Kube
from rolegate_operator.render import Check, Outcome
from rolegate_operator.render.upstream import upstream_check
from rolegate_operator.settings import Settings
from rolegate_operator.store import Key, Store, key_of, resource_version, version_of

__all__ = ["POLL_S", "Gateways", "ready_check"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 30  # one list request
#: Seconds between lists of the Leases while kopf delivers no event of them (the config
#: Secret's namespace is not among those served): a rollout is seen within this.
POLL_S = 2.0
#: Configs whose role hashes are kept (:meth:`Gateways._completed`): the current one and
#: those a replica may still serve during a quick succession of changes.
KEPT_CONFIGS = 4


def ready_check(
    check: Check, counts: GatewaysStatus | None, *, unknown: str | None = None
) -> Check:
    """``Ready`` of a role in the config whose check (before the gateways) is ``check``,
    now that ``counts`` of the live gateway replicas serve it (None: not known, ``unknown``
    says why). Only a True check changes: False with reason ``RollingOut`` while some live
    replica (or no replica at all) does not serve it, Unknown while the replicas cannot be
    known; True ``Served`` with the count when every live replica serves it."""
    if check.status is not ConditionStatus.TRUE:
        return check
    if counts is None:
        message = f"{unknown or 'the gateway replicas are not known'}; {check.message}"
        return Check(ConditionStatus.UNKNOWN, "GatewaysUnknown", message)
    if counts.total == 0:
        message = "in the gateway config, but no gateway replica reports yet (no live Lease)"
        return Check(ConditionStatus.FALSE, "RollingOut", message)
    if counts.serving < counts.total:
        message = (
            f"served by {counts.serving} of {counts.total} gateway replicas; the others "
            f"still serve an older config"
        )
        return Check(ConditionStatus.FALSE, "RollingOut", message)
    message = f"{check.message}; served by {counts.total} of {counts.total} gateway replicas"
    return Check(ConditionStatus.TRUE, check.reason, message)


def _matters(before: leases.Seen | None, after: leases.Seen) -> bool:
    """Whether a Lease seen as ``after`` changes a count: it was not live before (new, or
    back from expiry), or what it serves or how long it lives changed."""
    if before is None:
        return True
    old, new = before.report, after.report
    return (old.config_hash, old.role_hashes, old.duration_s, old.upstream) != (
        new.config_hash,
        new.role_hashes,
        new.duration_s,
        new.upstream,
    )


class Gateways:
    """The gateway Leases of the config Secret, in ``store.gateways``, and their verdicts.

    ``await_gateways`` (the operator's ``--await-gateways``): ``Ready`` waits for every live
    replica; off, ``Ready`` means "in the config" and ``status.gateways`` only informs.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: monotonic seconds, the event loop's clock (``loop.time()``'s)."""
        self.store = store
        self.namespace, name = settings.config_secret
        self.gateway_of = leases.gateway_of(name)
        self.selector = leases.selector(name)
        self.await_gateways = settings.await_gateways
        self._clock = clock
        #: Why the Leases cannot be listed (403: RBAC; 404: no Lease API), None when they can.
        self.unknown: str | None = None
        self._counted: frozenset[Key] = frozenset()  # live at the last judgement
        #: When the Leases were last heard of (a list, a watch event): monotonic seconds.
        self._heard_s = -math.inf
        #: The role hashes ({role: RoleConfig.hash}) of the last configs judged, by config
        #: hash, oldest first: what a replica whose Lease leaves its role hashes out (too many
        #: roles) serves, read from the config hash it reports.
        self._configs: dict[str, Mapping[str, str]] = {}

    def ours(self, body: Mapping[str, Any]) -> bool:
        """Whether a raw Lease is a gateway Lease of this operator's config Secret."""
        meta = body.get("metadata") or {}
        marks = meta.get("labels") or {}
        return (
            meta.get("namespace") == self.namespace
            and marks.get(leases.GATEWAY_OF_LABEL) == self.gateway_of
            and marks.get(leases.COMPONENT_LABEL) == leases.COMPONENT
        )

    def event(self, kind: str | None, body: Mapping[str, Any]) -> bool:
        """Record a watch event of a Lease (``kind`` None: listed by a watch that started
        over); True when it matters and the reconciler should wake."""
        if not self.ours(body):
            return False
        section = self.store.gateways
        key, version, now = key_of(body), version_of(body), self._clock()
        self._heard_s = now
        held = section.get(key)
        was = held if held is not None and held.live(now) else None
        if kind == "DELETED":
            section.delete(key, version)
            return was is not None
        seen = leases.observe(held, leases.Report.from_lease(body), now)
        return section.put(key, version, seen) and _matters(was, seen)

    async def refresh(self, kube: Kube) -> None:
        """Replace the section from a fresh list of the Leases (label selector, the config
        Secret's namespace). A list the API refuses for good (403: RBAC lacks ``list`` on
        leases; 404) or a bug leaves the replicas unknown (:attr:`unknown`, logged once per
        reason) and the pass goes on.

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: the API server is
                unreachable or unavailable (429, 5xx): the pass fails like its other lists.
        """
        try:
            body = await answer_json(
                client.CoordinationV1Api(kube.api).list_namespaced_lease(
                    self.namespace,
                    label_selector=self.selector,
                    _preload_content=False,
                    _request_timeout=_TIMEOUT_S,
                )
            )
        except Exception as exc:
            if isinstance(exc, API_ERRORS) and unavailable(exc):
                raise
            self._unknown(exc)
            return
        if self.unknown is not None:
            log.info("the gateway Leases in namespace %s can be listed again", self.namespace)
        self.unknown = None
        now, section = self._clock(), self.store.gateways
        deaf_s, self._heard_s = now - self._heard_s, now
        listed = []
        for item in body.get("items") or ():
            if self.ours(item):
                key, report = key_of(item), leases.Report.from_lease(item)
                held = section.get(key)
                # Heard of nothing for a whole duration (an API server outage): the
                # renewals made meanwhile were not seen, so the Lease is not taken for
                # expired; it counts from now, as a Lease first seen does.
                seen = leases.observe(None if deaf_s >= report.duration_s else held, report, now)
                listed.append((key, version_of(item), seen))
        version = resource_version((body.get("metadata") or {}).get("resourceVersion"))
        section.replace(listed, version, namespace=self.namespace)

    def _unknown(self, exc: BaseException) -> None:
        reason = f"the gateway Leases in namespace {self.namespace} cannot be listed"
        said = f"{reason}: {describe(exc) if isinstance(exc, API_ERRORS) else type(exc).__name__}"
        if said != self.unknown:
            log_failure(log, exc, "%s (the operator needs list and watch on leases): %s", reason)
        self.unknown = said

    def watched(self, namespaces: tuple[str, ...]) -> bool:
        """Whether kopf watches the Leases when it watches ``namespaces`` (empty: all)."""
        return not namespaces or self.namespace in namespaces

    async def poll(self, kube: Kube, wake: Callable[[], None]) -> None:
        """List the Leases every :data:`POLL_S` seconds and call ``wake`` when that changed
        a count (a replica appeared, went or serves something else), until cancelled: for
        an operator that serves namespaces other than the config Secret's, whose watches
        bring no Lease event. API trouble is left to the passes' own lists to report."""
        while True:
            await asyncio.sleep(POLL_S)
            before = self._picture()
            try:
                await self.refresh(kube)
            except API_ERRORS as exc:
                log.debug("cannot list the gateway Leases: %s", describe(exc))
                continue
            except Exception:  # a bug must not stop the reconciler beside it
                log.exception("polling the gateway Leases failed")
                continue
            if self._picture() != before:
                wake()

    def _picture(self) -> frozenset[tuple[Key, str | None, str, float, str]]:
        """What the counts and verdicts depend on: each live Lease's key, config hash, role
        hashes, duration and upstream health."""
        return frozenset(
            (
                key,
                s.report.config_hash,
                json.dumps(s.report.role_hashes),
                s.report.duration_s,
                repr(s.report.upstream),
            )
            for key, s in self.live().items()
        )

    def live(self, now: float | None = None) -> dict[Key, leases.Seen]:
        """The live Leases at ``now`` (monotonic seconds; default: the clock's now)."""
        at = self._clock() if now is None else now
        return {k: s for k, (_, s) in self.store.gateways.entries.items() if s.live(at)}

    def due(self) -> float | None:
        """When (monotonic seconds) the next live Lease expires unless renewed; None: none.
        A renewal seen meanwhile moves it on: then :meth:`expired` says nothing changed."""
        return min((s.expires_s for s in self.live().values()), default=None)

    def expired(self) -> bool:
        """Whether some Lease counted live by the last :meth:`judge` has expired or gone."""
        return not self._counted <= self.live().keys()

    def judge(self, outcomes: Iterable[Outcome], *, config_hash: str) -> tuple[Outcome, ...]:
        """``outcomes`` with ``gateways`` (the live replicas serving each role of the
        config, whose hash is ``config_hash``) and, with ``await_gateways``, ``Ready`` as
        :func:`ready_check` says. Roles not in the config are left as they are."""
        outcomes = tuple(outcomes)
        self._remember(config_hash, outcomes)
        live = self.live()
        self._counted = frozenset(live)
        reports = [self._completed(s.report) for s in live.values()]
        out = []
        for outcome in outcomes:
            role = outcome.config
            if role is None:
                out.append(outcome)
                continue
            counts = None
            if self.unknown is None:
                serving = sum(
                    report.serves(role.name, role.hash, config_hash=config_hash)
                    for report in reports
                )
                counts = GatewaysStatus(serving=serving, total=len(reports))
            ready = outcome.ready
            if self.await_gateways:
                ready = ready_check(ready, counts, unknown=self.unknown)
            upstream = upstream_check(
                role.name,
                role.hash,
                config_hash=config_hash,
                reports=None if self.unknown else reports,
                unknown=self.unknown,
            )
            out.append(
                dataclasses.replace(outcome, gateways=counts, ready=ready, upstream=upstream)
            )
        return tuple(out)

    def _remember(self, config_hash: str, outcomes: Sequence[Outcome]) -> None:
        """Keep the role hashes of config ``config_hash`` (its roles are the ``outcomes``
        with a config), and those of the :data:`KEPT_CONFIGS` - 1 configs judged before."""
        if config_hash in self._configs:
            self._configs[config_hash] = self._configs.pop(config_hash)  # newest again
            return
        self._configs[config_hash] = {o.config.name: o.config.hash for o in outcomes if o.config}
        while len(self._configs) > KEPT_CONFIGS:
            del self._configs[next(iter(self._configs))]

    def _completed(self, report: leases.Report) -> leases.Report:
        """``report``, with the role hashes of the config it serves when its Lease left them
        out (more roles than an annotation holds) and this operator judged that config: a
        replica still on the config before a change then serves every role the change did
        not touch, as it would say itself with fewer roles."""
        if report.role_hashes is not None or report.config_hash is None:
            return report
        known = self._configs.get(report.config_hash)
        return report if known is None else dataclasses.replace(report, role_hashes=known)
