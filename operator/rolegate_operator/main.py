"""The kopf handlers: the only module with ``@kopf`` decorators, each handler thin.

Two indices hold what the operator sees: every LLMRole (raw) and every Secret's
role-related keys (decoded). kopf calls no handler before both indices hold every object
of the initial listing, so the first reconcile after a (re)start sees all roles. The event
handlers only wake the :class:`~rolegate_operator.reconcile.Reconciler`, which writes the
config Secret, statuses and Events.

Every handler is ``async``: kopf runs plain functions in threads, and waking the
reconciler's asyncio.Event from a thread would not wake it.

Why no ``on.create``/``on.update``/``on.resume``: the config is one Secret for all roles, so
any change asks for the same level-triggered reconcile; and kopf's change handlers record
their progress in annotations on each LLMRole, a write to the user's object that GitOps
tools would see. Event handlers and indices write nothing, and need no finalizer: a deleted
role leaves the index, and the next reconcile leaves it out of the config.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubernetes_asyncio.config import ConfigException

from rolegate_gateway.api import GROUP, VERSION
from rolegate_gateway.kube import api_client, load_configuration
from rolegate_gateway.logs import quiet_client_bodies
from rolegate_operator.apply import PLURAL, Kube
from rolegate_operator.reconcile import Reconciler, secret_keys
from rolegate_operator.settings import Settings

__all__ = ["run"]

log = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, PLURAL)
async def llmroles(body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> Any:
    """(namespace, name) -> the raw LLMRole."""
    return {(namespace, name): dict(body)}


@kopf.index("", "v1", "secrets")
async def secrets(body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> Any:
    """(namespace, name) -> the Secret's role-related keys, decoded (nothing else kept)."""
    return {(namespace, name): secret_keys(body)}


# kopf passes the indices to startup handlers too; its ActivityFn protocol does not list them.
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


@kopf.on.startup()  # type: ignore[arg-type]
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    llmroles: kopf.Index[Any, Any],
    secrets: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """Start the reconciler over the two indices."""
    # Events are ours (one per condition transition); kopf's would repeat log lines.
    settings.posting.enabled = False
    # Bounded watches, so a half-open connection is noticed within minutes.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    ours: Settings = memo.settings
    kube = Kube(await api_client(ours.kubeconfig))

    def roles() -> list[Any]:
        return [body for store in llmroles.values() for body in store]

    def secret_data() -> dict[Any, Any]:
        return {key: next(iter(store)) for key, store in secrets.items()}

    memo.reconciler = Reconciler(ours, kube, roles=roles, secrets=secret_data)
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
async def role_changed(memo: kopf.Memo, **_: Any) -> None:
    """An LLMRole appeared, changed or went: reconcile."""
    memo.reconciler.wake()


@kopf.on.event("", "v1", "secrets")
async def secret_changed(
    memo: kopf.Memo, namespace: str | None, name: str | None, **_: Any
) -> None:
    """A Secret changed: reconcile when some role references it, or when it is the config
    Secret (edited or deleted by hand: put it right)."""
    reconciler: Reconciler = memo.reconciler
    reconciler.indexed()
    ours = (namespace, name) == reconciler.settings.config_secret
    if ours or (namespace and name and reconciler.references(namespace, name)):
        reconciler.wake()


@kopf.on.probe(id="reconcile")
async def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The liveness endpoint's report: the last reconcile, the last error, and the writes
    made since start (config Secret, statuses, Events; zero while nothing changes)."""
    reconciler: Reconciler | None = getattr(memo, "reconciler", None)
    last = reconciler.last if reconciler else None
    return {
        "roles": last.roles if last else None,
        "served": last.served if last else None,
        "configHash": last.config_hash if last else None,
        "lastError": reconciler.last_error if reconciler else None,
        "writes": dict(reconciler.kube.writes) if reconciler else None,
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
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{liveness}/healthz",
        memo=kopf.Memo(settings=settings),
    )
    return 0
