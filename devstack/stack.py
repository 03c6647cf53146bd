"""rolegate's own processes, run as a user runs them: the operator and the gateway, and the
LLMRole CRD they need in a control plane.

Each is a :class:`~devstack.process.Process` (own session, log file, SIGTERM then SIGKILL on
stop) started with the installed console scripts' modules, so what a test or the demo sees
is what ``rolegate-operator run`` and ``rolegate-gateway --config-secret`` do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from devstack import http
from devstack.k8s.controlplane import ControlPlane
from devstack.process import Process, free_ports

__all__ = ["CRDS", "LLMROLE_CRD", "GatewayProcess", "OperatorProcess", "install_crd"]

CRDS: Final = Path(__file__).resolve().parents[1] / "crds"
LLMROLE_CRD: Final = "llmroles.rolegate.dev"


def install_crd(plane: ControlPlane) -> str:
    """Apply crds/ to ``plane`` and wait until the LLMRole CRD is Established and ``kubectl
    explain`` finds it (the OpenAPI schema is published a little later); returns its name.

    Raises:
        devstack.k8s.controlplane.CommandError: kubectl failed.
        TimeoutError: the CRD was not served within 60 s.
    """
    plane.kubectl(["apply", "-f", str(CRDS)])
    # kubectl wait exits at once on an error (a server that has just started may still
    # answer 503 for a moment, or not find the CRD yet): retried, within the same bound.
    wait = ["wait", "--for=condition=Established", f"crd/{LLMROLE_CRD}", "--timeout=10s"]
    plane.wait_for(
        "the LLMRole CRD Established",
        lambda: plane.kubectl(wait, check=False).returncode == 0,
        timeout_s=60,
    )
    plane.wait_for(
        "kubectl explain llmroles",
        lambda: plane.kubectl(["explain", LLMROLE_CRD], check=False).returncode == 0,
        timeout_s=60,
    )
    return LLMROLE_CRD


def _env() -> dict[str, str]:
    """The environment without a kubeconfig or a pod's: the processes get ``--kubeconfig``."""
    drop = {"KUBECONFIG", "KUBERNETES_SERVICE_HOST"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONUNBUFFERED": "1"}


class OperatorProcess(Process):
    """``rolegate-operator run`` for some namespaces (none: all), writing one config Secret."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespaces: Sequence[str],
        config_secret: str,
        log_path: Path,
        extra: Sequence[str] = (),
        leader_election: Sequence[str] | None = None,
        await_gateways: bool = False,
    ) -> None:
        """``leader_election``: the ``--leader-election-*`` and timing flags of an operator
        that takes part in leader election; None (the default): ``--no-leader-elect``, one
        operator alone (a Lease outside a pod would be in namespace ``default``, shared by
        every test's operator). ``await_gateways``: Ready only once every live gateway
        replica serves a role (``--await-gateways``); off by default here, so a stack
        without gateways (or one whose gateway a test stops) still sees its roles Ready."""
        (port,) = free_ports(1)
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        argv = [sys.executable, "-m", "rolegate_operator", "run"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        if not namespaces:
            argv += ["--all-namespaces"]
        argv += ["--gateway-config-secret", config_secret, "--liveness", f"127.0.0.1:{port}"]
        argv += ["--kubeconfig", str(kubeconfig)]
        argv += ["--no-leader-elect"] if leader_election is None else [*leader_election]
        argv += ["--await-gateways" if await_gateways else "--no-await-gateways"]
        super().__init__("operator", [*argv, *extra], log_path=log_path, env=_env())

    def wait_live(self, timeout_s: float = 30) -> dict[str, Any]:
        """Wait for the liveness endpoint; returns its report.

        Raises:
            devstack.process.ProcessDied: the operator exited (its log tail attached).
            devstack.process.NotReady: no answer within ``timeout_s`` seconds.
        """
        report: dict[str, Any] = {}

        def live() -> bool:
            report.update(http.get_json(self.liveness, timeout_s=1))
            return True

        self.wait_ready(live, what=f"liveness {self.liveness}", timeout_s=timeout_s)
        return report


class GatewayProcess(Process):
    """``rolegate-gateway --config-secret NAMESPACE/NAME`` on a loopback port (0: a free one)."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        config_secret: str,
        log_path: Path,
        drain_grace_s: float = 5,
        port: int = 0,
        log_level: str = "debug",
        extra: Sequence[str] = (),
    ) -> None:
        """``extra``: more flags, after the others (``["--auth", "kubernetes"]``)."""
        argv = [
            sys.executable,
            "-m",
            "rolegate_gateway",
            "--config-secret",
            config_secret,
            "--kubeconfig",
            str(kubeconfig),
            "--port",
            str(port),
            "--drain-grace",
            str(drain_grace_s),
            "--log-level",
            log_level,
            *extra,
        ]
        super().__init__("gateway", argv, log_path=log_path, env=_env())

    def wait_serving(self, timeout_s: float = 30) -> str:
        """Wait until it listens; returns its base URL (``http://127.0.0.1:PORT``).

        Raises:
            devstack.process.ProcessDied: the gateway exited (its log tail attached).
            devstack.process.NotReady: it did not say where it listens in ``timeout_s`` s.
        """

        def listening() -> str:
            self.url = self.url_in_log(r"on (http://127\.0\.0\.1:\d+)/v1")
            return self.url

        self.wait_ready(listening, what="the line saying where it listens", timeout_s=timeout_s)
        return self.url

    def status(self) -> dict[str, Any]:
        """GET /status.

        Raises:
            OSError: the gateway does not answer.
        """
        report: dict[str, Any] = http.get_json(f"{self.url}/status")
        return report
