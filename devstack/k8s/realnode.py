"""A real Kubernetes node on this machine: kubelet + containerd + runc (+ kube-proxy).

This module owns the start-up, readiness and teardown of one real node (the simulated KWOK
nodes are :mod:`devstack.k8s.nodes`). Everything it starts lives in a private mount namespace
held by one process (``unshare --mount --propagation private``): there the kubelet's
sysctls are faked files (:data:`nodeconfig.FAKE_SYSCTLS`), the paths the kubelet and
containerd hard-code are tmpfs (:data:`nodeconfig.PRIVATE_PATHS`), and container rootfs,
volumes and pod netns are mounted, so the host's mount table never changes and all of it
goes with the namespace. Every other path is under the node's work directory. Teardown
removes what lives outside the namespace: kube-proxy's nftables tables, the pod sandboxes
(CNI DEL), the CNI bridge, the ``k8s.io`` cgroups and the mountpoint directories it created.
kube-proxy finds iptables, ipset and modprobe refusing (:data:`nodeconfig.HOST_RULE_TOOLS`),
so it never touches rules that are not its own.

    node = RealNode(work_dir, options=NodeOptions(kube_proxy=True))
    node.start(kubeconfig, proxy_kubeconfig=proxy)   # Ready node "localhost"
    node.import_image(archive, "localhost/app")     # pods use imagePullPolicy: Never
    node.stop()                                     # nothing left on the host

One real node runs per machine at a time (an abstract unix socket is the lock); a second
start raises :class:`RealNodeBusy`. What a SIGKILLed harness leaves (shims, containers) is
swept by the node's watchdog (:mod:`devstack.k8s.nodewatch`), or else at the next start.
The recipe, and the failures each setting avoids: /work/shared/reference/real-node.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devstack import apt, http
from devstack.k8s import build, nodebuild, nodeconfig, nodegpu, nodehost, nodewatch, pki
from devstack.k8s.nodeconfig import NodeLayout
from devstack.k8s.nodehost import unavailable_reason
from devstack.k8s.nodewatch import node_running_here, unavailable_now
from devstack.poll import wait_until
from devstack.process import Process, free_ports

__all__ = [
    "NodeOptions",
    "RealNode",
    "RealNodeBusy",
    "RealNodeError",
    "node_running_here",
    "start_for",
    "unavailable_now",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

_MACHINE_LOCK: Final = nodewatch.MACHINE_LOCK
_SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMMAND_TIMEOUT_S: Final = 60.0


class RealNodeError(RuntimeError):
    """The node failed to start (the message holds its components' log tails) or a command
    against it failed."""


class RealNodeBusy(RealNodeError):
    """Another real node runs on this machine (they share /sys/fs/cgroup/*/k8s.io and the
    host paths the kubelet hard-codes)."""


@dataclass(frozen=True)
class NodeOptions:
    """What a :class:`RealNode` runs besides kubelet and containerd."""

    kube_proxy: bool = True
    """Run kube-proxy (nftables mode, needs ``nft``), so ClusterIP Services route."""
    registries: tuple[str, ...] = ()
    """Plain-HTTP registries (``host:port``, e.g. ``127.0.0.1:5001``) containerd may pull
    from."""
    images: tuple[str, ...] = ("pause", "nodetest")
    """Images of :data:`nodebuild.IMAGES` imported at start (pause is the sandbox image)."""
    busy_wait_s: float = 0.0
    """Seconds :meth:`RealNode.start` waits for another real node on this machine to stop
    before it raises :class:`RealNodeBusy`."""
    gpus: int = 0
    """Fake ``nvidia.com/gpu`` devices the node advertises through a device plugin
    (:mod:`devstack.k8s.nodegpu`, component ``gpu-plugin``); 0: no plugin."""


def start_for(node: RealNode, keys: pki.Pki, *, server: str) -> None:
    """Start ``node`` for the control plane of ``keys`` at ``server`` (``https://...``):
    issue its identities from that CA (the kubelet as ``system:node:localhost`` in group
    ``system:nodes``, which the Node authorizer and NodeRestriction admit; kube-proxy as
    ``system:kube-proxy``, which the bootstrap role system:node-proxier is bound to), write
    their kubeconfigs into the node's work directory and :meth:`RealNode.start` it.

    Raises:
        RealNodeBusy, RealNodeError: as :meth:`RealNode.start`.
        OSError: the CA cannot be read.
    """
    work_dir = node.layout.root
    work_dir.mkdir(parents=True, exist_ok=True)

    def kubeconfig(name: str, user: str, groups: tuple[str, ...]) -> Path:
        client = pki.issue_client(keys, name, user, groups)
        return pki.write_kubeconfig(
            work_dir / f"{name}.kubeconfig", server=server, ca_cert=keys.ca_cert, client=client
        )

    node.start(
        kubeconfig("kubelet", f"system:node:{nodeconfig.NODE_NAME}", ("system:nodes",)),
        proxy_kubeconfig=kubeconfig("kube-proxy", "system:kube-proxy", ()),
    )


class RealNode:
    """One real node named ``localhost``; see the module docstring.

    Args:
        work_dir: every file of the node (configs, containerd's root and state, the
            kubelet's root, ``logs/<component>.log``); created, never removed here.
        options: kube-proxy, registries, images imported at start.
        bin_dir: kubelet, kube-proxy, containerd, ctr, the shim, crictl; default
            :func:`nodebuild.bin_dir` (not built here).
        cni_dir: the CNI plugins; default :func:`nodebuild.cni_dir`.
        kubectl: for the readiness check; default the control plane's.
        startup_timeout_s: seconds allowed for each readiness wait.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        options: NodeOptions | None = None,
        bin_dir: Path | None = None,
        cni_dir: Path | None = None,
        kubectl: Path | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.layout: Final = NodeLayout(work_dir)
        self.options: Final = options or NodeOptions()
        self.bin_dir: Final = bin_dir or nodebuild.bin_dir()
        self.cni_dir: Final = cni_dir or nodebuild.cni_dir()
        self.kubectl: Final = kubectl or build.bin_dir() / "kubectl"
        self.startup_timeout_s = startup_timeout_s
        seed = os.getpid()
        self.bridge: Final = nodeconfig.bridge_name(seed)
        """The CNI bridge's name (``rgnode<n>``)."""
        self.pod_subnet: Final = nodeconfig.pod_subnet(seed)
        self.components: dict[str, Process] = {}
        self.stop_problems: list[str] = []
        """What the last :meth:`stop` could not clean up (empty when all went)."""
        self._holder_ns = ""
        self._created: list[Path] = []
        self._lock: socket.socket | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._kubeconfig: Path | None = None
        self._proxy_kubeconfig: Path | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The Node object's name, ``localhost`` (pods select it with
        ``nodeSelector: {kubernetes.io/hostname: localhost}``)."""
        return nodeconfig.NODE_NAME

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running component in bytes, by name."""
        return {name: c.rss_bytes() for name, c in self.components.items() if c.running()}

    def log_tails(self, lines: int = 30) -> str:
        """The last ``lines`` of every component's log, each under a header."""
        return "\n".join(
            f"----- {name} ({c.log_path}) -----\n{c.log_tail(lines)}"
            for name, c in self.components.items()
        )

    def start(self, kubeconfig: Path, *, proxy_kubeconfig: Path | None = None) -> None:
        """Start the holder, containerd (importing ``options.images``), the kubelet with
        ``kubeconfig`` (best a ``system:node:localhost`` identity) and, with
        ``options.kube_proxy``, kube-proxy with ``proxy_kubeconfig`` (``system:kube-proxy``;
        default ``kubeconfig``); returns once the node is Ready.

        Raises:
            devstack.apt.AptUnavailable: kube-proxy needs ``nft`` and it cannot be installed.
            RealNodeBusy: another real node runs on this machine.
            RealNodeError: a component died or was not ready within ``startup_timeout_s``;
                the message holds the log tails. Everything started is stopped again.
        """
        if self._lock is not None:
            raise RuntimeError("a RealNode starts once; create a new one")
        missing = [b for b in nodebuild.BINARIES if not (self.bin_dir / b).is_file()]
        if missing:
            raise RealNodeError(
                f"missing {', '.join(missing)} in {self.bin_dir}: python -m devstack build node"
            )
        if self.options.kube_proxy:
            apt.ensure(["nftables"], why="kube-proxy in nftables mode (nft)")
        self._take_machine_lock()
        self._kubeconfig = kubeconfig
        self._proxy_kubeconfig = proxy_kubeconfig or kubeconfig
        started = time.monotonic()
        try:
            self._write_files()
            self._start_holder()
            self._start_containerd()
            for name in self.options.images:
                image = nodebuild.image(name)
                self.import_image(image.archive, image.base_name)
            self._start_kubelet(kubeconfig)
            log.info("node %s Ready in %.1f s", self.name, time.monotonic() - started)
            if self.options.gpus:  # after the kubelet: it registers with kubelet.sock
                nodegpu.start(
                    self._add,
                    count=self.options.gpus,
                    allocatable=lambda: nodegpu.allocatable(self.kubectl, kubeconfig, self.name),
                    timeout_s=self.startup_timeout_s,
                )
            if self.options.kube_proxy:
                self._start_kube_proxy(self._proxy_kubeconfig)
        except BaseException as error:
            tails = self.log_tails()
            self.stop()
            if isinstance(error, Exception):
                raise RealNodeError(f"real node failed to start: {error}\n{tails}") from error
            raise

    def import_image(self, archive: Path, name: str) -> None:
        """Import an OCI archive into containerd's ``k8s.io`` namespace as ``name:<tag>``
        (``ctr images import --base-name``; the tag is the archive's ``ref.name``).

        Raises:
            RealNodeError: ctr failed (its stderr in the message).
        """
        self._ctl(
            "ctr",
            [
                *(str(self.bin_dir / "ctr"), "--address", str(self.layout.socket), "-n", "k8s.io"),
                *("images", "import", "--base-name", name, str(archive)),
            ],
        )

    def add_registry(self, registry: str) -> None:
        """Let containerd pull from the plain-HTTP registry ``registry`` (``host:port``, e.g.
        ``127.0.0.1:5001``): writes its ``certs.d/<host:port>/hosts.toml``, which containerd
        reads at each pull, so a running node takes it too."""
        directory = self.layout.certs_d / registry
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(nodeconfig.to_toml(nodeconfig.hosts_toml(registry)))

    def crictl(
        self, args: Sequence[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run crictl against this node's containerd.

        Raises:
            RealNodeError: crictl exited non-zero and ``check`` is true.
        """
        argv = [str(self.bin_dir / "crictl"), f"--runtime-endpoint=unix://{self.layout.socket}"]
        return self._ctl("crictl", [*argv, "--timeout=60s", *args], check=check)

    def stop(self) -> None:
        """Stop everything and remove what lives outside the mount namespace, in this order:
        kube-proxy and its nftables tables, the kubelet, every pod sandbox (``crictl
        rmp -fa``: CNI DEL included), containerd, anything left in the namespace, the holder,
        the CNI bridge, the ``k8s.io`` cgroups, the host paths it created. Safe to call more
        than once; what could not be cleaned up is in :attr:`stop_problems` (and logged)."""
        self.stop_problems = []
        if self._watchdog is not None:  # this is the normal stop: no sweep after it
            self._watchdog.terminate()
            self._attempt("watchdog", lambda: self._watchdog and self._watchdog.wait(10))
            self._watchdog = None
        proxy = self.components.get("kube-proxy")
        if proxy is not None and proxy.pid is not None:
            self._attempt("kube-proxy", lambda: proxy.stop(grace_s=10.0))
            self._attempt("kube-proxy --cleanup", self._proxy_cleanup)
        if "gpu-plugin" in self.components:
            self._attempt("gpu-plugin", lambda: self.components["gpu-plugin"].stop(grace_s=5.0))
        if "kubelet" in self.components:
            self._attempt("kubelet", lambda: self.components["kubelet"].stop(grace_s=10.0))
        containerd = self.components.get("containerd")
        if containerd is not None and containerd.running():
            self._attempt("crictl rmp -fa", lambda: self.crictl(["rmp", "-fa"]))
        if containerd is not None:
            self._attempt("containerd", lambda: containerd.stop(grace_s=10.0))
        if self._holder_ns:
            holder = self.components["holder"].pid or 0
            self._attempt(
                "namespace leftovers",
                lambda: self.stop_problems.extend(
                    f"pid {pid} still ran in the namespace: killed"
                    for pid in nodehost.kill_in_namespace(self._holder_ns, spare=holder)
                ),
            )
        if "holder" in self.components:
            self._attempt("holder", lambda: self.components["holder"].stop(grace_s=5.0))
        self._holder_ns = ""  # the namespace is gone; its inode number may be reused
        if self._lock is not None:
            self._attempt("bridge", lambda: nodehost.delete_link(self.bridge))
            self._attempt("cgroups", nodehost.remove_cgroups)
            self._attempt("host paths", self._remove_created_paths)  # empty dirs on the host
            self._lock.close()  # releases the machine-wide lock
            self._lock = None
        for problem in self.stop_problems:
            log.warning("real node teardown: %s", problem)

    # -- start steps ------------------------------------------------------------------------

    def _take_machine_lock(self) -> None:
        """Bind the abstract socket :data:`_MACHINE_LOCK` (gone with this process, however it
        ends; no file), sweep what a killed node left, and note the host paths to remove."""
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def bound() -> bool:
            try:
                lock.bind(_MACHINE_LOCK)
            except OSError:
                return False
            return True

        try:
            waited = wait_until(bound, timeout_s=self.options.busy_wait_s, poll_s=1.0)
        except TimeoutError:
            lock.close()
            raise RealNodeBusy(
                f"another real node runs on this machine (waited {self.options.busy_wait_s:g} s)"
            ) from None
        if waited > 1.0:
            log.info("waited %.0f s for another real node on this machine to stop", waited)
        self._lock = lock
        try:
            swept = nodehost.sweep_orphans(
                bin_dir=self.bin_dir, bridge_prefix=nodeconfig.BRIDGE_PREFIX
            )
            for line in swept:
                log.warning("real node: swept a killed node's leftovers: %s", line)
            record = nodewatch.created_record()
            try:
                earlier = {Path(p) for p in json.loads(record.read_text())}
            except (OSError, ValueError):
                earlier = set()
            missing = {Path(p) for p in nodeconfig.PRIVATE_PATHS if not Path(p).exists()}
            self._created = sorted(earlier | missing)
            record.write_text(json.dumps([str(p) for p in self._created]))
            self.layout.logs.mkdir(parents=True, exist_ok=True)
            self._watchdog = nodewatch.spawn(self.bin_dir, self.layout.logs / "watchdog.log")
        except BaseException:  # the lock must not outlive a failed start
            if self._watchdog is not None:
                self._watchdog.terminate()
                self._watchdog.wait(10)
                self._watchdog = None
            lock.close()
            self._lock = None
            raise

    def _write_files(self) -> None:
        layout = self.layout
        for directory in (layout.logs, layout.cni_conf_dir, layout.cni_ipam_dir, layout.certs_d):
            directory.mkdir(parents=True, exist_ok=True)
        (layout.kubelet_dir / "pki").mkdir(parents=True, exist_ok=True)
        layout.fake_sysctls.mkdir(exist_ok=True)
        for name, value in nodeconfig.FAKE_SYSCTLS.items():
            (layout.fake_sysctls / name).write_text(f"{value}\n")
        config = nodeconfig.containerd_config(
            layout,
            cni_bin=self.cni_dir,
            runc=nodehost.RUNC,
            sandbox_image=nodebuild.image("pause").ref,
        )
        layout.containerd_config.write_text(nodeconfig.to_toml(config))
        for registry in self.options.registries:
            self.add_registry(registry)
        conflist = nodeconfig.cni_conflist(
            bridge=self.bridge, subnet=self.pod_subnet, ipam_dir=layout.cni_ipam_dir
        )
        (layout.cni_conf_dir / "10-rolegate.conflist").write_text(json.dumps(conflist, indent=1))

    def _env(self, *first: Path) -> dict[str, str]:
        path = os.pathsep.join([*map(str, first), str(self.bin_dir), _SYSTEM_PATH])
        return {**os.environ, "PATH": path}

    def _add(
        self,
        name: str,
        argv: Sequence[str],
        *,
        in_namespace: bool = True,
        env: dict[str, str] | None = None,
    ) -> Process:
        prefix = (
            ["nsenter", "--target", self._holder_pid(), "--mount", "--"] if in_namespace else []
        )
        component = Process(
            name,
            [*prefix, *argv],
            log_path=self.layout.logs / f"{name}.log",
            env=env or self._env(),
        )
        self.components[name] = component
        component.start()
        return component

    def _holder_pid(self) -> str:
        return str(self.components["holder"].pid)

    def _start_holder(self) -> None:
        script = nodeconfig.holder_script(
            fake_sysctls=self.layout.fake_sysctls,
            names=list(nodeconfig.FAKE_SYSCTLS),
            private=nodeconfig.PRIVATE_PATHS,
        )
        holder = self._add(
            "holder",
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
            in_namespace=False,
        )
        holder.wait_ready(
            lambda: "holder ready" in holder.log_text(),
            what="the mount namespace",
            timeout_s=self.startup_timeout_s,
        )
        self._holder_ns = os.readlink(f"/proc/{holder.pid}/ns/mnt")

    def _start_containerd(self) -> None:
        argv = [str(self.bin_dir / "containerd"), "--config", str(self.layout.containerd_config)]
        containerd = self._add("containerd", argv)
        containerd.wait_ready(
            self.layout.socket.is_socket, what="containerd.sock", timeout_s=self.startup_timeout_s
        )

    def _start_kubelet(self, kubeconfig: Path) -> None:
        port, healthz_port = free_ports(2)
        config = nodeconfig.kubelet_config(self.layout, port=port, healthz_port=healthz_port)
        self.layout.kubelet_config.write_text(json.dumps(config, indent=1))
        argv = nodeconfig.kubelet_argv(self.bin_dir / "kubelet", self.layout, kubeconfig=kubeconfig)
        kubelet = self._add("kubelet", argv)
        kubelet.url = f"https://127.0.0.1:{port}"
        kubelet.wait_ready(
            lambda: self._ready(kubeconfig), what="node Ready", timeout_s=self.startup_timeout_s
        )

    def _ready(self, kubeconfig: Path) -> bool:
        answer = subprocess.run(
            [
                *(str(self.kubectl), f"--kubeconfig={kubeconfig}", "get", "node", self.name),
                *("-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"),
            ],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
        if answer.returncode != 0:
            time.sleep(0.2)  # kubectl costs ~0.1 s of CPU: poll gently
        return answer.stdout.strip() == "True"

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        refusing = self.layout.root / "kube-proxy-path"
        refusing.mkdir(exist_ok=True)
        for tool in nodeconfig.HOST_RULE_TOOLS:
            (refusing / tool).write_text(nodeconfig.REFUSING_TOOL)
            (refusing / tool).chmod(0o755)
        metrics_port, healthz_port = free_ports(2)
        proxy = self._add(
            "kube-proxy",
            nodeconfig.kube_proxy_argv(
                self.bin_dir / "kube-proxy",
                kubeconfig=kubeconfig,
                cluster_cidr=self.pod_subnet,
                metrics_port=metrics_port,
                healthz_port=healthz_port,
            ),
            env=self._env(refusing),
        )
        url = f"http://127.0.0.1:{healthz_port}/healthz"
        proxy.wait_ready(
            lambda: http.get(url).status == 200,
            what="kube-proxy /healthz",
            timeout_s=self.startup_timeout_s,
        )

    def _ctl(
        self, what: str, argv: Sequence[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", "--target", self._holder_pid(), "--mount", "--"]
        answer = subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
        if check and answer.returncode != 0:
            raise RealNodeError(
                f"{what} exited with {answer.returncode}: {' '.join(argv)}\n{answer.stderr}"
            )
        return answer

    # -- stop steps -------------------------------------------------------------------------

    def _attempt(self, what: str, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as error:  # one failed step must not skip the others
            self.stop_problems.append(f"{what}: {error}")

    def _proxy_cleanup(self) -> None:
        nodehost.remove_kube_proxy_tables()

    def _remove_created_paths(self) -> None:
        for path in self._created:
            if path.is_dir():
                path.rmdir()  # empty on the host: the tmpfs on it was the namespace's
        self._created = []
        nodewatch.created_record().unlink(missing_ok=True)
