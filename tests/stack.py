"""rolegate's own processes for tests: the operator and the gateway, run as a user runs them.

Each is a :class:`~tests.cluster.processes.Component` (own session, log file, SIGTERM then
SIGKILL on stop) started with the installed console scripts' modules, so what a test sees
is what ``rolegate-operator run`` and ``rolegate-gateway --config-secret`` do.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from tests.cluster.harness import ControlPlane
from tests.cluster.processes import Component, free_ports

__all__ = ["CRDS", "LLMROLE_CRD", "GatewayProcess", "OperatorProcess", "install_crd"]

CRDS: Final = Path(__file__).resolve().parents[1] / "crds"
LLMROLE_CRD: Final = "llmroles.rolegate.dev"


def install_crd(plane: ControlPlane) -> str:
    """Apply crds/ to ``plane`` and wait until the LLMRole CRD is Established and ``kubectl
    explain`` finds it (the OpenAPI schema is published a little later); returns its name.

    Raises:
        tests.cluster.harness.CommandError: kubectl failed.
        TimeoutError: the CRD was not served within 60 s.
    """
    plane.kubectl(["apply", "-f", str(CRDS)])
    plane.kubectl(["wait", "--for=condition=Established", f"crd/{LLMROLE_CRD}", "--timeout=60s"])
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


def get_json(url: str, *, timeout_s: float = 5) -> Any:
    """GET ``url`` and parse its JSON body (4xx/5xx bodies too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


class OperatorProcess(Component):
    """``rolegate-operator run`` for some namespaces (none: all), writing one config Secret."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespaces: Sequence[str],
        config_secret: str,
        log_path: Path,
        extra: Sequence[str] = (),
    ) -> None:
        (port,) = free_ports(1)
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        argv = [sys.executable, "-m", "rolegate_operator", "run"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        if not namespaces:
            argv += ["--all-namespaces"]
        argv += ["--gateway-config-secret", config_secret, "--liveness", f"127.0.0.1:{port}"]
        argv += ["--kubeconfig", str(kubeconfig)]
        super().__init__("operator", [*argv, *extra], log_path=log_path, env=_env())

    def wait_live(self, timeout_s: float = 30) -> dict[str, Any]:
        """Wait for the liveness endpoint; returns its report."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            try:
                report: dict[str, Any] = get_json(self.liveness, timeout_s=1)
                return report
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"operator not live:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def log_text(self) -> str:
        """The whole log."""
        return self.log_path.read_text(errors="replace")


class GatewayProcess(Component):
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
    ) -> None:
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
        ]
        super().__init__("gateway", argv, log_path=log_path, env=_env())
        self.url = ""

    def wait_serving(self, timeout_s: float = 30) -> str:
        """Wait until it listens; returns its base URL (http://127.0.0.1:PORT)."""
        deadline = time.monotonic() + timeout_s
        while not self.url:
            self.check_running()
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", self.log_tail(200))
            if found:
                self.url = found.group(1)
            elif time.monotonic() > deadline:
                raise TimeoutError(f"gateway not serving:\n{self.log_tail()}")
            time.sleep(0.05)
        return self.url

    def status(self) -> dict[str, Any]:
        """GET /status."""
        report: dict[str, Any] = get_json(f"{self.url}/status")
        return report
