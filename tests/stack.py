"""rolegate's own processes for tests: the operator and the gateway, run as a user runs them,
and :class:`Stack`, the two of them serving one namespace of a control plane.

Each is a :class:`~tests.cluster.processes.Component` (own session, log file, SIGTERM then
SIGKILL on stop) started with the installed console scripts' modules, so what a test sees
is what ``rolegate-operator run`` and ``rolegate-gateway --config-secret`` do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import openai

from rolegate_gateway.config import GatewayConfig
from tests.cluster.harness import ControlPlane
from tests.cluster.processes import Component, free_ports
from tests.fakes import manifests as m

if TYPE_CHECKING:
    from tests.cluster.fixtures import Kubectl

__all__ = [
    "CONFIG",
    "CRDS",
    "LLMROLE_CRD",
    "GatewayProcess",
    "OperatorProcess",
    "Stack",
    "eventually",
    "install_crd",
    "running_stack",
]

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


#: The config Secret's name in a :class:`Stack`'s namespace.
CONFIG: Final = "gw-config"


async def eventually(check: Callable[[], Awaitable[object]], *, timeout_s: float = 30) -> None:
    """Poll an async ``check`` until it returns something true; TimeoutError past the bound."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polling the API server and the gateway
            await asyncio.sleep(0.1)


@dataclass
class Stack:
    """One namespace with its operator and gateway processes."""

    kubectl: Kubectl
    namespace: str
    operator: OperatorProcess
    gateway: GatewayProcess
    cluster: ControlPlane
    tmp: Path

    async def run(self, *args: str, check: bool = True) -> str:
        """kubectl off the event loop (the fake upstreams live on it)."""
        done = await asyncio.to_thread(self.kubectl, *args, check=check)
        return done.stdout + done.stderr

    async def apply(self, *docs: dict[str, Any]) -> str:
        """``kubectl apply -f`` of ``docs``, each one's namespace set to the stack's (in
        place), written to ``<tmp>/apply.yaml`` first; returns kubectl's output.

        Raises:
            tests.cluster.harness.CommandError: kubectl refused them.
        """
        for doc in docs:
            doc["metadata"]["namespace"] = self.namespace
        path = m.write(self.tmp / "apply.yaml", *docs)
        return await self.run("apply", "-f", str(path))

    async def role(self, name: str) -> dict[str, Any]:
        """The LLMRole ``name`` as the API server has it (``kubectl get -o json``)."""
        body: dict[str, Any] = json.loads(await self.run("get", "llmrole", name, "-o", "json"))
        return body

    async def condition(self, name: str, kind: str) -> tuple[str, str]:
        """(status, reason) of the role's condition ``kind``; ("", "") before there is one."""
        status = (await self.role(name)).get("status") or {}
        for cond in status.get("conditions", []):
            if cond["type"] == kind:
                return cond["status"], cond["reason"]
        return "", ""

    async def wait_condition(
        self, name: str, kind: str, want: tuple[str, str], timeout_s: float = 30
    ) -> None:
        """Wait until condition ``kind`` of role ``name`` is ``want`` (status, reason).

        Raises:
            TimeoutError: not within ``timeout_s`` seconds.
        """

        async def reached() -> bool:
            return await self.condition(name, kind) == want

        await eventually(reached, timeout_s=timeout_s)

    async def config(self) -> GatewayConfig | None:
        """The config Secret's content, parsed; None while there is none."""
        found = await asyncio.to_thread(
            self.kubectl, "get", "secret", CONFIG, "-o", "json", check=False
        )
        if found.returncode != 0:
            return None
        data = json.loads(found.stdout)["data"]["config.json"]
        return GatewayConfig.from_wire(base64.b64decode(data))

    async def served(self) -> list[str]:
        """The roles the gateway's /status shows, sorted."""
        return sorted(await asyncio.to_thread(lambda: self.gateway.status()["roles"]))

    async def wait_served(self, names: list[str], timeout_s: float = 30) -> None:
        """Wait until the gateway serves exactly ``names`` (TimeoutError past ``timeout_s``)."""

        async def served() -> bool:
            return await self.served() == sorted(names)

        await eventually(served, timeout_s=timeout_s)

    def sdk(self) -> openai.AsyncOpenAI:
        """An openai SDK client for the gateway: no key of its own, no retries, 30 s timeout."""
        return openai.AsyncOpenAI(
            base_url=f"{self.gateway.url}/v1", api_key="unused", max_retries=0, timeout=30
        )

    async def versions(self) -> dict[str, str]:
        """resourceVersion of every LLMRole and Secret in the namespace."""
        out = {}
        for kind in ("llmroles", "secrets"):
            items = json.loads(await self.run("get", kind, "-o", "json"))["items"]
            for item in items:
                out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
        return out


@contextlib.asynccontextmanager
async def running_stack(
    cluster: ControlPlane,
    namespace: str,
    kubectl: Kubectl,
    tmp_path: Path,
    *,
    operator_args: Sequence[str] = (),
) -> AsyncIterator[Stack]:
    """An operator for ``namespace`` writing Secret :data:`CONFIG` there, and a gateway
    serving it, both live; stopped on exit. Logs go to ``tmp_path``.

    Raises:
        TimeoutError: the operator's liveness probe or the gateway did not come up in 30 s.
        tests.cluster.processes.ComponentDied: one of them exited (its log tail attached).
    """
    operator = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        namespaces=[namespace],
        config_secret=f"{namespace}/{CONFIG}",
        log_path=tmp_path / "operator.log",
        extra=operator_args,
    )
    gateway = GatewayProcess(
        kubeconfig=cluster.kubeconfig,
        config_secret=f"{namespace}/{CONFIG}",
        log_path=tmp_path / "gateway.log",
    )
    operator.start()
    gateway.start()
    try:
        await asyncio.to_thread(operator.wait_live)
        await asyncio.to_thread(gateway.wait_serving)
        yield Stack(kubectl, namespace, operator, gateway, cluster, tmp_path)
    finally:
        gateway.stop()
        operator.stop()
