"""The kopf handlers: the only module with ``@kopf`` decorators, each handler thin.

The operator's view of every LLMRole, every Secret's role-related keys and every client API
key (its hash) is the reconciler's :class:`~rolegate_operator.store.Store`: the event
handlers record each watch event in it and wake the
:class:`~rolegate_operator.reconcile.Reconciler`, which writes the config Secret, statuses
and Events, and which also replaces the store from fresh lists of the API (its first pass,
every resync, and after a watch listed anew), because kopf's relisting after a watch gap
never reports what was deleted meanwhile. No kopf index is
used: an index has the same blind spot, and kopf would hold every handler until its first
listing, which with no object at all is never "done" for an empty install.

Every handler is ``async``: kopf runs plain functions in threads, and waking the
reconciler's asyncio.Event from a thread would not wake it.

Why no ``on.create``/``on.update``/``on.resume``: the config is one Secret for all roles, so
any change asks for the same level-triggered reconcile; and kopf's change handlers record
their progress in annotations on each LLMRole, a write to the user's object that GitOps
tools would see. Event handlers write nothing, and need no finalizer: a deleted role leaves
the store, and the next reconcile leaves it out of the config.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import kopf
from kubernetes_asyncio.config import ConfigException

from rolegate_gateway import leases
from rolegate_gateway.api import GROUP, VERSION
from rolegate_gateway.kube import API_ERRORS, api_client, describe, load_configuration
from rolegate_gateway.logs import quiet_client_bodies
from rolegate_operator.apply import PLURAL, Kube
from rolegate_operator.election import run_elected
from rolegate_operator.leader import LeaseGuard
from rolegate_operator.reconcile import Reconciler
from rolegate_operator.render import backend
from rolegate_operator.render.secret import MANAGED_BY
from rolegate_operator.settings import LeaderElection, Settings

__all__ = ["api_backoffs", "run"]

log = logging.getLogger(__name__)

#: The User-Agent of the reconciler's API calls (kopf's own say ``kopf/<version>``).
USER_AGENT = "rolegate-operator"


def _user_agent(settings: Settings) -> str:
    """:data:`USER_AGENT`, with the Lease holder identity when electing a leader
    (``rolegate-operator (pod_1a2b3c4d)``): the audit log then says which replica wrote."""
    election = settings.leader_election
    return f"{USER_AGENT} ({election.identity})" if election else USER_AGENT


#: Seconds one failed API request of kopf's is retried for before kopf gives up on it.
API_RETRY_BUDGET_S = 120.0
#: The backends' objects the operator watches (their changes make ``BackendReady``), and the
#: labels they carry.
_BACKEND_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "pods"),
    ("", "v1", "persistentvolumeclaims"),
)
_BACKEND_LABELS = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    "app.kubernetes.io/component": backend.COMPONENT,
}
#: The gateway replicas' Leases (``rolegate_gateway.leases``): ``status.gateways``.
_LEASES = ("coordination.k8s.io", "v1", "leases")


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's connection, from the same configuration as the reconciler's client (in a pod:
    its ServiceAccount, unless --kubeconfig; else --kubeconfig or $KUBECONFIG), so both
    always talk to one cluster as one identity.

    Raises:
        kopf.LoginError: no usable configuration.
    """
    ours: Settings = memo.settings
    try:
        conf = await load_configuration(ours.kubeconfig)
    except ConfigException as exc:
        raise kopf.LoginError(f"cannot reach the Kubernetes API: {exc}") from exc
    if not conf.host:
        raise kopf.LoginError("the Kubernetes configuration names no API server")
    header = await conf.get_api_key_with_prefix("BearerToken")
    scheme, _space, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=conf.host,
        ca_path=conf.ssl_ca_cert,
        insecure=not conf.verify_ssl,
        scheme=scheme or ("Bearer" if token else None),
        token=token or None,
        certificate_path=conf.cert_file,
        private_key_path=conf.key_file,
    )


def api_backoffs(cap_s: float, *, budget_s: float = API_RETRY_BUDGET_S) -> tuple[float, ...]:
    """kopf's delays (seconds) between attempts of one failed API request: 0.5, 1, then
    ``cap_s`` apart until they add up to ``budget_s``.

    kopf's default (1 … 21 s, 54 s in all) keeps an API server back from a restart waiting
    up to 21 s for the watches; ours retries at most ``cap_s`` apart. After the last attempt
    a watch starts over, but a request of kopf's start (API discovery, the namespace list)
    ends the operator: the budget is what an outage during start may last (it was 13.5 s,
    and a restart on a loaded machine outlasted it). Raises ValueError if ``cap_s`` <= 0.
    """
    if cap_s <= 0:
        raise ValueError(f"cap_s must be positive, not {cap_s}")
    delays = [min(cap_s, 0.5), min(cap_s, 1.0)]
    while sum(delays) < budget_s:
        delays.append(cap_s)
    return tuple(delays)


async def wait_for_role_api(kube: Kube, retry_s: float) -> None:
    """Return once the API server serves ``llmroles.rolegate.dev/v1`` (API discovery, which
    every authenticated client may read), retrying every ``retry_s`` seconds and saying
    every 30 s what is missing: with scanning off, kopf looks for the resource only once,
    right after this start handler."""
    path = f"/apis/{GROUP}/{VERSION}"
    said = -math.inf
    while True:
        try:
            if PLURAL in await kube.api_resources(GROUP, VERSION):
                return
            problem = f"{path} does not serve {PLURAL}"
        except API_ERRORS as exc:
            problem = f"{path}: {describe(exc)}"
        now = time.monotonic()
        if now - said >= 30:
            log.warning(
                "waiting for the LLMRole API (%s): install the CRD with "
                "`kubectl apply -f crds/` or the Helm chart",
                problem,
            )
            said = now
        await asyncio.sleep(retry_s)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Start the reconciler; its first pass lists everything, events or not."""
    # Events are ours (one per condition transition); kopf's would repeat log lines.
    settings.posting.enabled = False
    # Bounded watches, so a half-open connection is noticed within minutes.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    ours: Settings = memo.settings
    settings.networking.error_backoffs = api_backoffs(ours.max_unavailable_delay_s)
    # The namespaces are names (not patterns) and the LLMRole API is there (waited for
    # below): kopf need not list namespaces nor watch CRDs, so the operator needs no
    # cluster-wide permission for either (the chart's least-privilege RBAC).
    settings.scanning.disabled = True
    # Only the backends' Deployments, pods and claims, filtered by the API server: kopf's
    # handler labels filter on the client, after every pod of the cluster was sent.
    for resource in _BACKEND_RESOURCES:
        settings.watching.label_selectors[resource] = backend.SELECTOR
    # Only the gateway Leases of this config Secret (not the nodes' or the elections').
    settings.watching.label_selectors[_LEASES] = leases.selector(ours.config_secret[1])
    # With leader election, every write checks that the Lease is still ours (election.py).
    guard = getattr(memo, "guard", None)
    kube = Kube(await api_client(ours.kubeconfig, user_agent=_user_agent(ours)), guard=guard)
    await wait_for_role_api(kube, ours.max_unavailable_delay_s)
    memo.reconciler = Reconciler(ours, kube)
    memo.task = asyncio.create_task(memo.reconciler.run(), name="rolegate-reconcile")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the reconciler and close its API client."""
    task: asyncio.Task[None] | None = getattr(memo, "task", None)
    if task is None:  # startup failed before it started anything
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await memo.reconciler.kube.api.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def role_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    """An LLMRole was listed, appeared, changed or went: record it and reconcile."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        reconciler.role_event(type, body)


@kopf.on.event("", "v1", "secrets")
async def secret_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    """A Secret was listed, appeared, changed or went: record its role-related keys and, if
    it is labelled as a client API key, the key's hash; reconcile when some role references
    it, it is or was an API key, or it is the config Secret."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        reconciler.secret_event(type, body)


@kopf.on.event("apps", "v1", "deployments", labels=_BACKEND_LABELS)
@kopf.on.event("", "v1", "pods", labels=_BACKEND_LABELS)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=_BACKEND_LABELS)
async def backend_changed(memo: kopf.Memo, namespace: str | None, **_: Any) -> None:
    """A backend's Deployment, pod or cache claim changed: reconcile (``BackendReady``)."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None and namespace:
        reconciler.backend_event(namespace)


@kopf.on.event(
    *_LEASES,
    labels={leases.COMPONENT_LABEL: leases.COMPONENT, leases.GATEWAY_OF_LABEL: kopf.PRESENT},
)
async def lease_changed(memo: kopf.Memo, type: str | None, body: kopf.Body, **_: Any) -> None:
    """A gateway replica's Lease was listed, appeared, renewed or went: record it; reconcile
    when a replica appeared or went or what it serves changed (``status.gateways``)."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    if reconciler is not None:
        reconciler.lease_event(type, body)


@kopf.on.probe(id="reconcile")
async def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The liveness endpoint's report: the last reconcile, the last error, the writes
    made since start (config Secret, statuses, Events; zero while nothing changes), the
    fresh lists read since start and this process's leader identity (a standby serves
    ``{"standby": ...}`` instead: ``election.py``)."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    last = reconciler.last if reconciler else None
    election: LeaderElection | None = memo.settings.leader_election
    return {
        "roles": last.roles if last else None,
        "served": last.served if last else None,
        "configHash": last.config_hash if last else None,
        "lastPassS": round(last.took_s, 4) if last else None,
        "lastError": reconciler.last_error if reconciler else None,
        "writes": dict(reconciler.kube.writes) if reconciler else None,
        "lists": reconciler.lists if reconciler else None,
        # This process's Lease holder identity (it leads while kopf runs); None: no election.
        "leader": election.identity if election else None,
    }


def run(settings: Settings, *, liveness: str, log_level: str, log_format: str) -> int:
    """Run the operator until SIGINT/SIGTERM; returns the exit status.

    ``liveness`` is ``HOST:PORT`` of the liveness endpoint (``GET /healthz``).
    """
    kopf.configure(
        debug=log_level == "debug",
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if log_level in ("warning", "error"):
        logging.getLogger().setLevel(log_level.upper())
    quiet_client_bodies()
    if log_level != "debug":
        # kopf says "Handler 'role_changed' succeeded." for every watch event: debug only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    def operate(guard: LeaseGuard | None = None) -> int:
        kopf.run(
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://{liveness}/healthz",
            memo=kopf.Memo(settings=settings, guard=guard),
        )
        return 0

    if settings.leader_election is None:
        return operate()
    return run_elected(
        settings.leader_election,
        operate,
        kubeconfig=settings.kubeconfig,
        user_agent=_user_agent(settings),
        liveness=liveness,
    )
