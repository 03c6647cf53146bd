"""rolegate installed the way users install it: the image pushed to a registry, the Helm
chart installed with ``--wait``, on the harness's real node; shared by the demo and the e2e
tests.

Owns the values the harness needs on top of ``helm/rolegate/ci/node-values.yaml`` (the API
server's port, the image reference in the local registry, free ports on the node's loopback,
which is this machine's) and the gateway pod as the demo and the tests talk to it:
:class:`PodGateway` (its URL on 127.0.0.1, ``/status``, and its pod's logs).

The registry is :class:`devstack.registry.Registry` (plain HTTP on 127.0.0.1); the node
pulls from it (``pullPolicy: Always``) after :meth:`devstack.k8s.realnode.RealNode.add_registry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from devstack import http, registry
from devstack.image import oci
from devstack.k8s.controlplane import ControlPlane
from devstack.process import free_ports

__all__ = ["CHART", "NODE_VALUES", "Installed", "PodGateway", "install_on_node"]

CHART: Final = Path(__file__).resolve().parents[1] / "helm" / "rolegate"
NODE_VALUES: Final = CHART / "ci" / "node-values.yaml"
#: Where the chart's gateway pods carry their component label.
_GATEWAY_SELECTOR: Final = "app.kubernetes.io/component=gateway"
_OPERATOR_SELECTOR: Final = "app.kubernetes.io/component=operator"


@dataclass
class PodGateway:
    """The chart's gateway pod, listening on the node's addresses (hostNetwork), which are
    this machine's: ``url`` is ``http://127.0.0.1:<port>``."""

    plane: ControlPlane
    namespace: str
    port: int
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        """The gateway's ``GET /status`` (roles, config, drains), parsed.

        Raises:
            OSError, ValueError: it does not answer, or not with JSON.
        """
        answer: dict[str, Any] = http.get_json(f"{self.url}/status")
        return answer

    def check_running(self) -> None:
        """Nothing to check from here: a pod that died is restarted by its Deployment, and
        :meth:`status` then fails until it is back (the callers poll)."""

    def logs(self, component: str = "gateway", lines: int = 40) -> str:
        """The last ``lines`` log lines of the chart's ``component`` pods (``gateway`` or
        ``operator``), as ``kubectl logs`` gives them.

        Raises:
            devstack.k8s.controlplane.CommandError: kubectl failed.
        """
        selector = _GATEWAY_SELECTOR if component == "gateway" else _OPERATOR_SELECTOR
        done = self.plane.kubectl(
            ["logs", "-l", selector, f"--tail={lines}", "--prefix"], namespace=self.namespace
        )
        return done.stdout


@dataclass(frozen=True)
class Installed:
    """What :func:`install_on_node` did: the release, the image reference it pulled, the
    gateway, and the seconds the push and ``helm install --wait`` took."""

    release: str
    namespace: str
    image_ref: str
    gateway: PodGateway
    push_s: float
    install_s: float


def install_on_node(
    plane: ControlPlane,
    *,
    namespace: str,
    archive: Path,
    registry_host: str,
    release: str = "rolegate",
    install_crds: bool = True,
    gateway_port: int | None = None,
    extra_values: dict[str, str] | None = None,
    timeout_s: float = 240.0,
) -> Installed:
    """Push the image ``archive`` to the registry at ``registry_host`` (``127.0.0.1:PORT``)
    and ``helm install --wait`` the chart into ``namespace`` (created if missing) on
    ``plane``'s real node with ``ci/node-values.yaml``, pulling that image.

    ``install_crds`` False leaves the CRD to whoever installed it (one owner per cluster);
    ``gateway_port`` None picks a free port; ``extra_values`` are more ``--set`` pairs.

    Raises:
        ValueError: ``plane`` has no real node.
        devstack.registry.CraneError: the push failed.
        devstack.k8s.controlplane.CommandError: helm failed (its output in the message),
            e.g. the pods did not become Ready within ``timeout_s`` seconds.
    """
    if plane.node is None:
        raise ValueError("install_on_node needs a control plane with a real node")
    image = oci.read_archive(archive)
    ref = f"{registry_host}/rolegate/rolegate:{image.ref_name}"
    started = time.monotonic()
    registry.push(archive, ref)
    plane.node.add_registry(registry_host)
    push_s = time.monotonic() - started
    live_port, chosen = free_ports(2)
    port = gateway_port or chosen
    strings = {"image.repository": ref.rpartition(":")[0], "image.tag": image.ref_name}
    values = {
        "apiServer.port": plane.server.rsplit(":", 1)[1],
        "image.pullPolicy": "Always",
        "crds.install": "true" if install_crds else "false",
        "operator.livenessPort": str(live_port),
        "gateway.port": str(port),
        **(extra_values or {}),
    }
    argv = ["install", release, str(CHART), "--values", str(NODE_VALUES)]
    argv += ["--namespace", namespace, "--create-namespace"]
    for key, value in values.items():
        argv += ["--set", f"{key}={value}"]
    for key, value in strings.items():  # a tag like 1.0 must stay a string
        argv += ["--set-string", f"{key}={value}"]
    argv += ["--wait", "--timeout", f"{int(timeout_s)}s"]
    started = time.monotonic()
    plane.helm(argv, timeout_s=timeout_s + 30)
    install_s = time.monotonic() - started
    return Installed(release, namespace, ref, PodGateway(plane, namespace, port), push_s, install_s)
