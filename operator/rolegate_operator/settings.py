"""The operator's settings: what ``rolegate-operator run`` was told, in one immutable value."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_BACKEND_RELEASE_S",
    "DEFAULT_LEASE_DURATION_S",
    "DEFAULT_LEASE_NAME",
    "DEFAULT_RENEW_DEADLINE_S",
    "DEFAULT_RESYNC_S",
    "DEFAULT_RETRY_PERIOD_S",
    "LeaderElection",
    "Settings",
    "new_identity",
    "pod_namespace",
]

#: The default of :attr:`Settings.resync_s` and ``--resync-interval``, in seconds.
DEFAULT_RESYNC_S = 60.0
#: The default of :attr:`Settings.backend_release_s` and ``--backend-release-delay``, seconds.
DEFAULT_BACKEND_RELEASE_S = 390.0
#: The defaults of :class:`LeaderElection` and the ``--leader-election-*`` flags.
DEFAULT_LEASE_NAME = "rolegate-operator"
#: Seconds; controller-runtime's (and KubeAI's, Envoy AI Gateway's) 15/10/2 s.
DEFAULT_LEASE_DURATION_S = 15.0
DEFAULT_RENEW_DEADLINE_S = 10.0
DEFAULT_RETRY_PERIOD_S = 2.0
#: Where Kubernetes mounts a pod's namespace (with its ServiceAccount token).
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace(path: Path = POD_NAMESPACE_FILE) -> str:
    """The namespace of the pod this runs in (from ``path``), or "default" outside a pod."""
    try:
        return path.read_text().strip() or "default"
    except OSError:
        return "default"


def new_identity() -> str:
    """A holder identity for this process: the pod's name (``$POD_NAME``, else the host
    name), an underscore and 8 random hex digits, so two processes on one host differ."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaderElection:
    """How one operator replica takes part in leader election over a
    ``coordination.k8s.io/v1`` Lease; the meaning of each duration is client-go's
    (https://pkg.go.dev/k8s.io/client-go/tools/leaderelection#LeaderElectionConfig).

    Raises (on construction):
        ValueError: a duration not positive, or not ``retry_period_s < renew_deadline_s <
            lease_duration_s``.
    """

    #: (namespace, name) of the Lease.
    lease: tuple[str, str]
    #: This process's holder identity: unique among the replicas (pod name + random suffix).
    identity: str
    #: Seconds a follower waits, from when it last saw the Lease change, before it takes
    #: the Lease over (default 15): the longest failover after a leader dies.
    lease_duration_s: float = DEFAULT_LEASE_DURATION_S
    #: Seconds the leader keeps leading (and writing) without a successful renewal (default
    #: 10); then it stops. Shorter than the lease duration, so it stops before a follower
    #: may take over.
    renew_deadline_s: float = DEFAULT_RENEW_DEADLINE_S
    #: Seconds between attempts to acquire or renew (default 2).
    retry_period_s: float = DEFAULT_RETRY_PERIOD_S

    def __post_init__(self) -> None:
        durations = (self.retry_period_s, self.renew_deadline_s, self.lease_duration_s)
        if min(durations) <= 0:
            raise ValueError(f"leader election durations must be positive, not {durations}")
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease duration, not "
                f"{self.retry_period_s:g} / {self.renew_deadline_s:g} / "
                f"{self.lease_duration_s:g} s"
            )

    @property
    def lease_ref(self) -> str:
        """``NAMESPACE/NAME`` of the Lease, for messages."""
        return "/".join(self.lease)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How one operator runs. Units are in the names."""

    #: (namespace, name) of the Secret the gateway reads its config from.
    config_secret: tuple[str, str]
    #: Namespaces whose LLMRoles this operator serves; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    #: Seconds between passes that read fresh lists of LLMRoles and Secrets (default 60).
    #: The bound on how long a deletion hidden by a watch gap (an API server restart, a
    #: resourceVersion gone) can stay served when no relist reveals the gap, and the repair
    #: of edits made behind the operator's back (the config Secret edited by hand). Each
    #: costs one list of LLMRoles and one of Secrets per namespace served (measured on a
    #: local API server: 0.13-0.3 s for 1,000 roles, 2.1 MB, and the whole pass 0.5 s).
    resync_s: float = DEFAULT_RESYNC_S
    #: Seconds a reconcile waits after a change for more changes to batch with it
    #: (``kubectl apply -f roles/`` of four roles is one config write). Default 0.1.
    debounce_s: float = 0.1
    #: Seconds before the first retry of a failed reconcile (default 1); doubles each time.
    retry_delay_s: float = 1.0
    #: Seconds between retries at most (default 60) when the API server answers with an
    #: error that waiting will not fix soon (403, 404, a bug): asked once a minute.
    max_retry_delay_s: float = 60.0
    #: Seconds between retries at most (default 2) while the API server is unreachable or
    #: answers 429/5xx (a restart, a rollout): a pass runs within seconds of its return.
    #: A watch event (the watch is back) ends such a wait early.
    max_unavailable_delay_s: float = 2.0
    #: kubeconfig outside a pod; None: the pod's ServiceAccount, $KUBECONFIG or ~/.kube/config.
    kubeconfig: Path | None = None
    #: A ServiceAccount in the config Secret's namespace that owns the Secret (an owner
    #: reference): deleting it, as ``helm uninstall`` does, has Kubernetes' garbage
    #: collector delete the Secret and the keys in it. None: no owner.
    config_owner: str | None = None
    #: Seconds a backend no role uses any more (nor the config the gateway serves names) is
    #: kept before it is deleted (default 390): the calls still in flight on it finish
    #: first. The gateway lets a rebound role's calls run 2 x timeoutSeconds + 15 s (375 s
    #: at the default 180 s), so a shorter delay can cut a long stream; its GPUs are held
    #: that long after a rebind.
    backend_release_s: float = DEFAULT_BACKEND_RELEASE_S
    #: Leader election among operator replicas; None: none (this process always writes).
    leader_election: LeaderElection | None = None
    #: ``Ready`` waits for the gateway replicas (default False): True only when every live
    #: replica's Lease says it serves the role's configHash, else False ``RollingOut``.
    #: Off, ``Ready`` means "in the config Secret" and ``status.gateways`` only informs.
    await_gateways: bool = False

    @property
    def config_secret_ref(self) -> str:
        """``NAMESPACE/NAME`` of the config Secret, for messages."""
        return "/".join(self.config_secret)
