"""The operator's settings: what ``rolegate-operator run`` was told, in one immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_BACKEND_RELEASE_S", "DEFAULT_RESYNC_S", "Settings"]

#: The default of :attr:`Settings.resync_s` and ``--resync-interval``, in seconds.
DEFAULT_RESYNC_S = 60.0
#: The default of :attr:`Settings.backend_release_s` and ``--backend-release-delay``, seconds.
DEFAULT_BACKEND_RELEASE_S = 390.0


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

    @property
    def config_secret_ref(self) -> str:
        """``NAMESPACE/NAME`` of the config Secret, for messages."""
        return "/".join(self.config_secret)
