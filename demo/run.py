"""``make demo``: rolegate end to end on this machine, from nothing (about 15 s once built).

It builds what is missing (the pinned Kubernetes binaries and llama.cpp's server, both cached
under ``~/.cache/rolegate/``, with progress), then starts on 127.0.0.1, all through
:mod:`devstack`: a real control plane, llama.cpp's OpenAI-compatible server with tiny
generated models (chat: tiny-a, tiny-b; embeddings: tiny-embed; 32K-token context), and
rolegate, in one of two ways, and it says which:

- where a real node can run (root, runc, cgroups: :func:`devstack.k8s.realnode.unavailable_reason`)
  and none runs already, as users install it: the node's binaries and rolegate's image are
  built too (cached), a full control plane with a real kubelet + containerd + runc node
  starts, the image is pushed to a local registry and ``helm install --wait`` installs the
  chart (CRD, operator, gateway, RBAC) with ``helm/rolegate/ci/node-values.yaml``; the pods
  pull the image and run on that node. The chart's gateway checks its clients (Kubernetes
  tokens and RBAC), so the demo's client is ServiceAccount ``demo-client``, bound to the
  chart's ClusterRole ``rolegate-user`` in the roles' namespace, with a token of the
  gateway's audience from the TokenRequest API (``kubectl create token``);
- else (or with ``--processes``), etcd + kube-apiserver, the CRD, and the operator and the
  gateway as local processes (the gateway on 127.0.0.1 checks no client: ``--auth none``).

It
``kubectl apply``s examples/local/ (LightRAG's roles bound to that server), prints
``kubectl get llmroles``, sends chat and embedding requests through the gateway with the
openai SDK (one chat streamed, printed as it arrives), rebinds one role to the other model
while requests flow and prints how many failed, then stops everything. Ctrl-C (or SIGTERM)
stops everything at any point. ``--keep`` leaves it all running until Ctrl-C, for a person to
explore.

Exit status: 0 when every step worked and no request failed; 1 otherwise (with ``--keep``:
the same, after Ctrl-C); 130 when Ctrl-C or SIGTERM cut a run short; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from demo import traffic
from devstack import apt, process, registry
from devstack.cache import BuildFailed
from devstack.helm_install import PodGateway, install_on_node
from devstack.image import build as image_build
from devstack.k8s import build as k8s_build
from devstack.k8s import nodebuild, realnode
from devstack.k8s.controlplane import ControlPlane
from devstack.llama import build as llama_build
from devstack.llama.model import EMBEDDING_MODELS, MODELS, write_models
from devstack.llama.server import LlamaServer
from devstack.process import signals_deferred, sigterm_raises_interrupt, wait_for_interrupt
from devstack.stack import GatewayProcess, OperatorProcess, install_crd

__all__ = ["main"]

ROOT: Final = Path(__file__).resolve().parents[1]
EXAMPLES: Final = ROOT / "examples" / "local"
NAMESPACE: Final = "rolegate-demo"
CONFIG_SECRET: Final = f"{NAMESPACE}/rolegate-gateway-config"
ROLES: Final = ("embed", "extract", "keyword", "query", "vlm")
"""examples/local/'s roles, as ``kubectl get`` lists them."""
EMBEDDING_ROLE: Final = "embed"
CHAT_ROLES: Final = tuple(role for role in ROLES if role != EMBEDDING_ROLE)
API_KEY: Final = "sk-local-demo"  # examples/local/llama-creds.yaml
EXAMPLE_HOST: Final = "http://127.0.0.1:8001/v1"  # examples/local/roles.yaml
REBOUND_ROLE: Final = "query"
#: The demo's client identity on the Helm way: a ServiceAccount in the roles' namespace,
#: bound to the chart's user ClusterRole, with a token for the gateway's audience.
CLIENT_ACCOUNT: Final = "demo-client"
USER_CLUSTER_ROLE: Final = "rolegate-user"  # helm/rolegate: gateway.auth.userClusterRole.name
TOKEN_AUDIENCE: Final = "rolegate"  # helm/rolegate: gateway.auth.tokenAudience
_TMP_PREFIX: Final = "rolegate-demo-"


class DemoFailed(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True)
class Running:
    """What :func:`_start` started: the control plane, the work directory (models, logs)
    and the gateway, the model server's port, and the clients' credential (a Kubernetes
    token where the gateway checks clients, else :data:`demo.traffic.NO_KEY`)."""

    plane: ControlPlane
    workdir: Path
    gateway: GatewayProcess | PodGateway
    model_port: int
    api_key: str = traffic.NO_KEY

    @property
    def base_url(self) -> str:
        """The gateway's OpenAI base URL."""
        return f"{self.gateway.url}/v1"


class Say:
    """Progress lines, each with the seconds since the demo started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[demo {time.monotonic() - self.started:5.1f}s] {text}", flush=True)


def _port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (with SO_REUSEADDR, as uvicorn and
    aiohttp do, so a just-closed server's TIME_WAIT connections do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run the operator and gateway as local processes, even where the chart could be "
        "installed on a real node",
    )
    parser.add_argument("--gateway-port", type=int, default=8080, help="the gateway's port (8080)")
    parser.add_argument(
        "--model-port", type=int, default=8001, help="llama.cpp server's port (8001)"
    )
    return parser.parse_args(argv)


def _kubectl(plane: ControlPlane, *args: str) -> str:
    """Run kubectl in the demo's namespace, echoing the command; returns its output."""
    print(f"$ kubectl {shlex.join(args)} -n {NAMESPACE}", flush=True)
    done = plane.kubectl(list(args), namespace=NAMESPACE)
    return done.stdout.rstrip()


def _client_token(plane: ControlPlane) -> str:
    """Make ServiceAccount :data:`CLIENT_ACCOUNT` a client of the roles (a RoleBinding to
    the chart's user ClusterRole in their namespace) and return a token of it for the
    gateway's audience, valid one hour, from the TokenRequest API: what a pod's projected
    ``serviceAccountToken`` volume would hold. The commands are echoed, the token is not.

    Raises:
        devstack.k8s.controlplane.CommandError: kubectl failed.
    """
    print(_kubectl(plane, "create", "serviceaccount", CLIENT_ACCOUNT), flush=True)
    binding = [
        "create",
        "rolebinding",
        f"{CLIENT_ACCOUNT}-rolegate",
        f"--clusterrole={USER_CLUSTER_ROLE}",
        f"--serviceaccount={NAMESPACE}:{CLIENT_ACCOUNT}",
    ]
    print(_kubectl(plane, *binding), flush=True)
    token = ["create", "token", CLIENT_ACCOUNT, "--audience", TOKEN_AUDIENCE, "--duration", "1h"]
    return _kubectl(plane, *token)


def _manifests(workdir: Path, model_port: int) -> Path:
    """examples/local/, or a copy pointing at ``model_port`` when it is not the default."""
    url = f"http://127.0.0.1:{model_port}/v1"
    if url == EXAMPLE_HOST:
        return EXAMPLES
    copy = workdir / "examples-local"
    copy.mkdir()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        (copy / path.name).write_text(path.read_text().replace(EXAMPLE_HOST, url))
    return copy


def _build(say: Say) -> None:
    """Build the control plane's binaries and llama.cpp's server when the cache lacks them."""
    version = k8s_build.KUBE_VERSION
    if k8s_build.is_built():
        say(f"Kubernetes {version} binaries: cached in {k8s_build.cache_dir()}")
    else:
        say(f"Kubernetes {version} binaries: building (once, ~12 min on 2 cores) ...")
        k8s_build.ensure(sys.stdout)
    llama = f"llama.cpp server (llama-cpp-python {llama_build.VERSION})"
    if llama_build.is_built():
        say(f"{llama}: cached in {llama_build.home()}")
    else:
        say(f"{llama}: building (once, ~3 min) ...")
        llama_build.ensure(sys.stdout)


def _serves(gateway: GatewayProcess | PodGateway, roles: Sequence[str]) -> bool:
    """Whether the gateway serves exactly ``roles``.

    Raises:
        devstack.process.ProcessDied: the gateway exited (its log tail attached).
    """
    gateway.check_running()
    return sorted(gateway.status()["roles"]) == sorted(roles)


def _check_ports(args: argparse.Namespace) -> None:
    """Refuse ports that are taken, or the same port twice (0, any free port, is fine)."""
    if args.gateway_port and args.gateway_port == args.model_port:
        raise DemoFailed("--gateway-port and --model-port must differ")
    for port, flag in ((args.gateway_port, "--gateway-port"), (args.model_port, "--model-port")):
        if port and not _port_free(port):
            raise DemoFailed(f"port {port} on 127.0.0.1 is in use: free it or pass {flag} N")


def _model_server(args: argparse.Namespace, workdir: Path, models: dict[str, Path]) -> LlamaServer:
    """llama.cpp's server with the demo's chat and embedding models (not started)."""
    return LlamaServer(
        {alias: models[alias] for alias in MODELS},
        embedding_models={alias: models[alias] for alias in EMBEDDING_MODELS},
        workdir=workdir,
        port=args.model_port,
        api_key=API_KEY,
    )


def _node_unavailable(args: argparse.Namespace) -> str | None:
    """Why the demo runs processes instead of installing the chart on a real node; None
    when it installs the chart."""
    if args.processes:
        return "--processes"
    if os.geteuid() == 0:  # runc is the one part a fresh Debian machine lacks; installable
        with contextlib.suppress(apt.AptUnavailable, BuildFailed):
            apt.ensure(["runc"], sys.stdout, why="the real node")
    return realnode.unavailable_now()


def _start(args: argparse.Namespace, say: Say, stack: contextlib.ExitStack) -> Running:
    """Build what is missing, then start everything, registering each stop on ``stack``."""
    reason = _node_unavailable(args)
    if reason is None:
        say("rolegate: installing with Helm on a real node (kubelet + containerd + runc)")
    else:
        say(f"rolegate: running the operator and gateway as local processes ({reason})")
    _build(say)
    # Removed at the end; kept (and its path printed) when something failed.
    workdir = stack.enter_context(process.work_dir(_TMP_PREFIX))
    say(f"work directory (models, logs): {workdir}")
    seeds = {**MODELS, **EMBEDDING_MODELS}
    models = write_models(workdir, seeds)
    sizes = ", ".join(
        f"{a} (seed {seeds[a]}, {p.stat().st_size // 1024} KiB)" for a, p in models.items()
    )
    say(f"models generated: {sizes}")

    if reason is None:
        return _start_on_node(args, say, stack, workdir, models)
    plane = stack.enter_context(ControlPlane())
    say(f"control plane up: etcd and kube-apiserver {k8s_build.KUBE_VERSION} at {plane.server}")
    install_crd(plane)
    say("CRD llmroles.rolegate.dev installed and established")
    plane.kubectl(["create", "namespace", NAMESPACE])

    server = _model_server(args, workdir, models)
    stack.enter_context(server)
    operator = OperatorProcess(
        kubeconfig=plane.kubeconfig,
        namespaces=[NAMESPACE],
        config_secret=CONFIG_SECRET,
        log_path=workdir / "operator.log",
    )
    stack.enter_context(operator)
    gateway = GatewayProcess(
        kubeconfig=plane.kubeconfig,
        config_secret=CONFIG_SECRET,
        log_path=workdir / "gateway.log",
        port=args.gateway_port,
        log_level="info",
    )
    stack.enter_context(gateway)
    server.wait_serving()
    say(f"llama.cpp server on {server.url} serving {', '.join(models)} (key in a Secret)")
    operator.wait_live()
    say(f"operator watching namespace {NAMESPACE}, writing Secret {CONFIG_SECRET}")
    base_url = f"{gateway.wait_serving()}/v1"
    say(f"gateway on {base_url}, watching that Secret")
    print(f"  kubeconfig: {plane.kubeconfig}", flush=True)
    print(f"  gateway:    {base_url}", flush=True)
    return Running(plane, workdir, gateway, server.port)


def _start_on_node(
    args: argparse.Namespace,
    say: Say,
    stack: contextlib.ExitStack,
    workdir: Path,
    models: dict[str, Path],
) -> Running:
    """The full control plane with a real node, the model server, a local registry with
    rolegate's image, and the chart installed with ``helm install --wait``."""
    for what, module, minutes in (
        ("the real node's binaries", nodebuild, "~9"),
        ("rolegate's image", image_build, "~2"),
    ):
        if module.is_built():
            say(f"{what}: cached in {module.cache_dir()}")
        else:
            say(f"{what}: building (once, {minutes} min on 2 cores) ...")
            module.ensure(sys.stdout)
    registry.ensure_crane(sys.stdout)
    plane = stack.enter_context(ControlPlane(full=True, real_node=True))
    say(
        f"control plane up: kube-apiserver {k8s_build.KUBE_VERSION} at {plane.server}, "
        "a real node 'localhost' Ready"
    )
    server = _model_server(args, workdir, models)
    stack.enter_context(server)
    local = registry.Registry(disk=workdir / "registry", log_path=workdir / "registry.log")
    stack.enter_context(local)
    local.wait_serving()
    server.wait_serving()
    say(f"llama.cpp server on {server.url} serving {', '.join(models)} (key in a Secret)")
    say(f"$ helm install rolegate helm/rolegate -n {NAMESPACE} --create-namespace --wait ...")
    installed = install_on_node(
        plane,
        namespace=NAMESPACE,
        archive=image_build.archive_path(),
        registry_host=local.host,
        gateway_port=args.gateway_port or None,
    )
    say(
        f"image pushed to {installed.image_ref} in {installed.push_s:.1f} s; chart installed "
        f"and its pods Ready in {installed.install_s:.1f} s"
    )
    print(_kubectl(plane, "get", "pods", "-o", "wide"), flush=True)
    gateway = installed.gateway
    base_url = f"{gateway.url}/v1"
    say(f"gateway pod on {base_url} (hostNetwork), watching Secret {CONFIG_SECRET}")
    token = _client_token(plane)
    say(
        f"the gateway checks clients: the openai SDK's api_key is a token of ServiceAccount "
        f"{CLIENT_ACCOUNT} (audience {TOKEN_AUDIENCE}, bound to ClusterRole {USER_CLUSTER_ROLE})"
    )
    print(f"  kubeconfig: {plane.kubeconfig}", flush=True)
    print(f"  gateway:    {base_url}", flush=True)
    return Running(plane, workdir, gateway, server.port, api_key=token)


def _exercise(args: argparse.Namespace, say: Say, running: Running) -> None:
    """Apply the roles, chat, stream and rebind under load (then wait, with ``--keep``).

    Raises:
        DemoFailed: a request failed while rebinding (after the ``--keep`` wait).
        devstack.k8s.controlplane.CommandError: kubectl failed.
        TimeoutError: a role did not become Ready or served, or the new model never answered.
    """
    plane, base_url, key = running.plane, running.base_url, running.api_key
    manifests = _manifests(running.workdir, running.model_port)
    print(_kubectl(plane, "apply", "-f", str(manifests)), flush=True)
    _kubectl(plane, "wait", "--for=condition=Ready", "llmrole", "--all", "--timeout=60s")
    plane.wait_for(
        "the gateway to serve the roles",
        lambda: _serves(running.gateway, ROLES),
        timeout_s=30,
    )
    say(f"{len(ROLES)}/{len(ROLES)} roles Ready and served by the gateway")
    print(_kubectl(plane, "get", "llmroles"), flush=True)

    say(f"chat through the gateway (openai SDK, base_url={base_url}):")
    asyncio.run(traffic.ask_each(base_url, CHAT_ROLES, api_key=key))
    say("embeddings:")
    asyncio.run(traffic.embed(base_url, EMBEDDING_ROLE, api_key=key))
    say("streamed:")
    asyncio.run(traffic.stream_one(base_url, REBOUND_ROLE, api_key=key))

    old, new = "tiny-a", "tiny-b"
    say(f"rebinding role {REBOUND_ROLE} from {old} to {new} while 4 clients send requests:")
    patch = ["patch", "llmrole", REBOUND_ROLE, "--type=merge"]
    patch += ["-p", f'{{"spec":{{"model":"{new}"}}}}']

    async def rebind() -> None:
        print(await asyncio.to_thread(_kubectl, plane, *patch), flush=True)

    result = asyncio.run(
        traffic.rebind_under_load(base_url, REBOUND_ROLE, new_model=new, rebind=rebind, api_key=key)
    )
    traffic.say_result(result, old, new)
    print(_kubectl(plane, "get", "llmroles"), flush=True)

    if args.keep:
        say("everything keeps running; try, in another terminal:")
        print(f"  export KUBECONFIG={plane.kubeconfig} PATH={plane.bin_dir}:$PATH", flush=True)
        print(f"  kubectl get llmroles -n {NAMESPACE} -o wide", flush=True)
        print(f"  kubectl describe llmrole query -n {NAMESPACE}", flush=True)
        print(f"  curl -s {base_url.removesuffix('/v1')}/status", flush=True)
        auth = ""
        if key != traffic.NO_KEY:  # the gateway checks clients: a fresh token of the client
            mint = f"create token {CLIENT_ACCOUNT} -n {NAMESPACE} --audience {TOKEN_AUDIENCE}"
            print(f"  export TOKEN=$(kubectl {mint})", flush=True)
            auth = ' -H "Authorization: Bearer $TOKEN"'
        print(
            f"  curl -s {base_url}/chat/completions -H 'Content-Type: application/json'{auth}"
            ' -d \'{"model":"extract","messages":[{"role":"user","content":"hi"}]}\'',
            flush=True,
        )
        say("Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            wait_for_interrupt()
    if result.failed:
        raise DemoFailed(f"{result.failed} of {result.sent} requests failed while rebinding")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; see the module docstring. Returns the exit status."""
    args = _parse(argv)
    say = Say()
    say("rolegate demo: everything runs on 127.0.0.1 and stops at the end (Ctrl-C stops it too)")
    with sigterm_raises_interrupt():
        try:
            _check_ports(args)
            stack = contextlib.ExitStack()
            failure: BaseException | None = None
            try:
                _exercise(args, say, _start(args, say, stack))
            except BaseException as exc:
                failure = exc
                raise
            finally:
                say("stopping the gateway, operator, model server and control plane ...")
                with signals_deferred():  # a second Ctrl-C cannot cut the stop short
                    stack.__exit__(type(failure) if failure else None, failure, None)
        except KeyboardInterrupt:
            say("interrupted: everything stopped")
            return 130
        except Exception as exc:  # every failure ends the same way: why, and a non-zero status
            say(f"failed: {type(exc).__name__}: {exc}")
            return 1
    say("stopped; nothing is left running")
    return 0
