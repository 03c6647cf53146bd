"""Prometheus metrics, all prefixed ``rolegate_``, in a registry of the gateway's own.

Owns the metric families and the per-role label sets. Labels are role, namespace,
binding and model — never a credential or a prompt. A client's identity is a label only
with ``--metrics-client-label`` (:meth:`Metrics.count_clients`), in families of its own.
Gauges of queue depth and calls in flight are read from the role queues at scrape time, so
the request path pays nothing for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rolegate_gateway.config import RefusedRole, RoleConfig
from rolegate_gateway.queue import RoleQueue
from rolegate_gateway.translators.base import Usage

__all__ = ["BackendCollector", "Metrics", "RoleMetrics", "SlotsCollector"]

ROLE_LABELS = ("role", "namespace", "binding", "model")

#: Buckets in seconds: proxy overhead is sub-millisecond, LLM calls take seconds to minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def role_labels(role: RoleConfig) -> tuple[str, str, str, str]:
    """Label values of one role."""
    return (role.name, role.namespace, str(role.upstream.binding), role.upstream.model)


@dataclass(slots=True)
class RoleMetrics:
    """The labelled children of one role wrapper, resolved on first use and kept, so
    requests skip lookups (and a config of 10,000 roles makes no histogram series for the
    roles nobody calls: making two took ~0.4 ms a role)."""

    metrics: Metrics
    labels: tuple[str, str, str, str]
    _duration: Histogram | None = None
    _ttft: Histogram | None = None
    _codes: dict[int, Counter] = field(default_factory=dict)
    _tokens: list[int] | None = None  # prompt, completion, cached (Metrics.token_counts')

    def request(self, code: int, duration_s: float) -> None:
        """Count one answered request and observe its duration; ``code`` is the HTTP status
        the client got, 499 when it went away or stopped reading, 500 for a gateway bug."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.metrics.requests.labels(*self.labels, str(code))
            self.metrics.used(self.labels, "requests", str(code))
        child.inc()
        duration = self._duration
        if duration is None:
            duration = self._duration = self.metrics.duration.labels(*self.labels)
        duration.observe(duration_s)

    def first_token(self, seconds: float) -> None:
        """Observe a stream's time to its first content (as its translator saw it)."""
        ttft = self._ttft
        if ttft is None:
            ttft = self._ttft = self.metrics.ttft.labels(*self.labels)
        ttft.observe(seconds)

    def tokens(self, usage: Usage) -> None:
        """Count the tokens of one answer (the upstream's usage, after translation): three
        integer additions; the series are made at scrape time (:class:`_TokenCollector`)."""
        counts = self._tokens
        if counts is None:
            counts = self._tokens = self.metrics.token_counts.setdefault(self.labels, [0, 0, 0])
        counts[0] += usage.prompt
        counts[1] += usage.completion
        counts[2] += usage.cached

    def rejected(self) -> None:
        """Count a request the queue refused."""
        self.metrics.rejected.labels(*self.labels).inc()

    def upstream_error(self, kind: str) -> None:
        """Count an upstream failure: timeout, unavailable, status or drained. Statuses the
        client's request caused (``errors.CLIENT_STATUSES``) are not counted here."""
        self.metrics.upstream_errors.labels(*self.labels, kind).inc()
        self.metrics.used(self.labels, "upstream_errors", kind)


class _QueueCollector(Collector):
    """Scrape-time gauges from the live role queues."""

    def __init__(self, roles: Callable[[], Iterable[tuple[RoleConfig, RoleQueue]]]) -> None:
        self._roles = roles

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "rolegate_in_flight", "Upstream calls in flight per role.", labels=ROLE_LABELS
        )
        queued = GaugeMetricFamily(
            "rolegate_queued", "Requests waiting for a slot per role.", labels=ROLE_LABELS
        )
        max_async = GaugeMetricFamily(
            "rolegate_max_async", "Configured maxAsync per role.", labels=ROLE_LABELS
        )
        for role, queue in self._roles():
            labels = list(role_labels(role))
            in_flight.add_metric(labels, queue.running)
            queued.add_metric(labels, queue.queued)
            max_async.add_metric(labels, queue.limits.max_async)
        yield from (in_flight, queued, max_async)


class _TokenCollector(Collector):
    """``rolegate_tokens_total`` at scrape time from the per-role counts: counting a
    request's tokens costs three additions instead of three prometheus-client counter
    updates (with their locks) on the request path."""

    _KINDS = ("prompt", "completion", "cached")

    def __init__(self, counts: dict[tuple[str, ...], list[int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "rolegate_tokens",
            "Tokens of answered requests, from the upstream's usage: kind prompt (cached "
            "included), completion, cached (prompt tokens read from a prompt cache).",
            labels=(*ROLE_LABELS, "kind"),
        )
        for labels, counts in self._counts.items():
            for kind, value in zip(self._KINDS, counts, strict=True):
                family.add_metric([*labels, kind], value)
        yield family


class BackendCollector(Collector):
    """``rolegate_backend_endpoints{backend,namespace}`` at scrape time: the ready endpoints
    of each backend whose EndpointSlices the gateway has read (none: not watched)."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._counts = counts  # (service, namespace, ready endpoints)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "rolegate_backend_endpoints",
            "Ready endpoints (pods) of a backend, from its EndpointSlices.",
            labels=("backend", "namespace"),
        )
        for service, namespace, ready in self._counts():
            family.add_metric([service, namespace], ready)
        yield family


class SlotsCollector(Collector):
    """The concurrency store's series at scrape time (``--concurrency-store`` only):
    ``rolegate_global_slots_in_use{role}``, ``rolegate_concurrency_store_errors_total``
    and ``rolegate_concurrency_fallback`` (1 while this replica admits its share alone)."""

    def __init__(
        self,
        in_use: Callable[[], dict[str, int]],
        errors: Callable[[], int],
        fallback: Callable[[], bool],
    ) -> None:
        self._in_use, self._errors, self._fallback = in_use, errors, fallback

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        in_use = GaugeMetricFamily(
            "rolegate_global_slots_in_use",
            "Slots of a role's global maxAsync this replica holds in the concurrency store.",
            labels=("role",),
        )
        for role, count in self._in_use().items():
            in_use.add_metric([role], count)
        yield in_use
        yield CounterMetricFamily(
            "rolegate_concurrency_store_errors",
            "Calls to the concurrency store that failed (unreachable, timed out, refused).",
            value=self._errors(),
        )
        yield GaugeMetricFamily(
            "rolegate_concurrency_fallback",
            "1 while the concurrency store is unreachable and each role admits only "
            "maxAsync // live replicas here; 0 in global mode.",
            value=int(self._fallback()),
        )


class Metrics:
    """The gateway's metric families in ``registry`` (a fresh one per gateway app)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        roles: Callable[[], Iterable[tuple[RoleConfig, RoleQueue]]],
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            "rolegate_requests",
            "Requests answered, by HTTP status code.",
            [*ROLE_LABELS, "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "rolegate_request_duration_seconds",
            "Seconds from request to last byte of the answer.",
            ROLE_LABELS,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "rolegate_time_to_first_token_seconds",
            "Seconds from request to the first content (or tool-call) delta of a stream.",
            ROLE_LABELS,
            buckets=_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "rolegate_rejected",
            "Requests refused with 429 (queue full or wait exceeded).",
            ROLE_LABELS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "rolegate_upstream_errors",
            "Failed upstream calls by kind: timeout, unavailable, status, drained "
            "(not the client-caused 400, 413, 415, 422).",
            [*ROLE_LABELS, "kind"],
            registry=registry,
        )
        #: Tokens per role's labels: [prompt, completion, cached], ever growing (a rebound
        #: role with the same labels goes on counting); removed by :meth:`retire`.
        self.token_counts: dict[tuple[str, ...], list[int]] = {}
        registry.register(_TokenCollector(self.token_counts))
        self.refused = Gauge(
            "rolegate_roles_refused",
            "1 per role of the served config that this gateway cannot serve (its binding is "
            "unknown to this gateway version).",
            ["role", "namespace", "binding"],
            registry=registry,
        )
        self.reloads = Counter(
            "rolegate_reloads",
            "Config reloads by outcome: applied, unchanged, refused.",
            ["outcome"],
            registry=registry,
        )
        self.config_info = Gauge(
            "rolegate_config_info",
            "1 for the config being served, labelled with its hash and role count.",
            ["hash", "roles"],
            registry=registry,
        )
        self.auth = Counter(
            "rolegate_auth",
            "Client access decisions: allowed, denied (403), unauthenticated (401), "
            "unavailable (503: the Kubernetes API could not review the client).",
            ["result"],
            registry=registry,
        )
        #: Per-client families, made by :meth:`count_clients` (opt-in).
        self.client_requests: Counter | None = None
        self.client_tokens: Counter | None = None
        registry.register(_QueueCollector(roles))
        self._used: dict[tuple[str, ...], set[tuple[str, str]]] = {}

    def auth_result(self, result: str) -> None:
        """Count one client access decision (``rolegate_auth_total{result}``)."""
        self.auth.labels(result).inc()

    def count_clients(self) -> None:
        """Add the per-client families (``--metrics-client-label``), for cost attribution:
        ``rolegate_client_requests_total{client,role,namespace,code}`` and
        ``rolegate_client_tokens_total{client,role,namespace,type}``. ``client`` is the
        caller's Kubernetes user name (a ServiceAccount's, or ``rolegate:apikey:NS:NAME``):
        one series per client and role, so keep it off where clients are many."""
        self.client_requests = Counter(
            "rolegate_client_requests",
            "Requests answered per client identity and role, by HTTP status code.",
            ["client", "role", "namespace", "code"],
            registry=self.registry,
        )
        self.client_tokens = Counter(
            "rolegate_client_tokens",
            "Tokens per client identity and role, by type: prompt, completion, cached.",
            ["client", "role", "namespace", "type"],
            registry=self.registry,
        )

    def client(self, client: str, role: RoleConfig, code: int, usage: Usage | None) -> None:
        """Count one answered request of ``client`` on ``role`` (with its tokens), when
        :meth:`count_clients` was called."""
        if self.client_requests is None or self.client_tokens is None:
            return
        self.client_requests.labels(client, role.name, role.namespace, str(code)).inc()
        if usage is not None:
            for kind, count in zip(("prompt", "completion", "cached"), usage, strict=True):
                if count:
                    self.client_tokens.labels(client, role.name, role.namespace, kind).inc(count)

    def for_role(self, role: RoleConfig) -> RoleMetrics:
        """Metrics bound to one role's labels."""
        return RoleMetrics(self, role_labels(role))

    def used(self, labels: tuple[str, ...], family: str, extra: str) -> None:
        """Note that a series of ``family`` (requests, upstream_errors) exists for a role's
        ``labels`` plus ``extra`` (its code or kind), so :meth:`retire` can remove it."""
        self._used.setdefault(labels, set()).add((family, extra))

    def retire(self, labels: tuple[str, ...]) -> None:
        """Remove every series of one role's label values (a removed or relabelled role)."""
        self.token_counts.pop(labels, None)
        for family, extra in self._used.pop(labels, set()):
            with contextlib.suppress(KeyError):
                getattr(self, family).remove(*labels, extra)
        for metric in (self.duration, self.ttft, self.rejected):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def unrouted(self, code: int) -> None:
        """Count an answer given before a role was known (a malformed request, an unknown
        role, a surplus connection): ``rolegate_requests_total`` with empty role labels."""
        self.requests.labels("", "", "", "", str(code)).inc()

    def refused_roles(self, roles: Iterable[RefusedRole]) -> None:
        """Point ``rolegate_roles_refused`` at the roles the served config could not have."""
        self.refused.clear()
        for role in roles:
            self.refused.labels(role.name, role.namespace, role.binding).set(1)

    def config_applied(self, config_hash: str, roles: int) -> None:
        """Point ``rolegate_config_info`` at the config now served."""
        self.config_info.clear()
        self.config_info.labels(config_hash, str(roles)).set(1)
