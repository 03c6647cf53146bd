"""The operator's settings: what ``rolegate-operator run`` was told, in one immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How one operator runs. Units are in the names."""

    #: (namespace, name) of the Secret the gateway reads its config from.
    config_secret: tuple[str, str]
    #: Namespaces whose LLMRoles this operator serves; empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    #: Seconds between full reconciles when nothing changed (a safety net for edits made
    #: to the config Secret by hand). Default 300; each costs one GET.
    resync_s: float = 300.0
    #: Seconds a reconcile waits after a change for more changes to batch with it
    #: (``kubectl apply -f roles/`` of four roles is one config write). Default 0.1.
    debounce_s: float = 0.1
    #: Seconds before the first retry of a failed reconcile (default 1); doubles each time.
    retry_delay_s: float = 1.0
    #: Seconds between retries at most (default 60): an API server down for long is asked
    #: once a minute.
    max_retry_delay_s: float = 60.0
    #: kubeconfig outside a pod; None: the pod's ServiceAccount, $KUBECONFIG or ~/.kube/config.
    kubeconfig: Path | None = None

    @property
    def config_secret_ref(self) -> str:
        """``NAMESPACE/NAME`` of the config Secret, for messages."""
        return "/".join(self.config_secret)
