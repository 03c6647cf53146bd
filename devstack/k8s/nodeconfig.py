"""The real node's files and command lines, as pure functions (no I/O, no processes).

This module owns what :mod:`devstack.k8s.realnode` writes into its work directory and runs:
the layout of that directory (:class:`NodeLayout`), containerd's config (version 3, TOML),
the ``hosts.toml`` of each plain-HTTP registry, the CNI conflist, the KubeletConfiguration,
the mount-namespace holder's script and the kubelet's and kube-proxy's command lines.
Why each non-default setting is there is told beside it; the recipe it follows, with the
failures that led to each, is /work/shared/reference/real-node.md.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "BRIDGE_PREFIX",
    "FAKE_SYSCTLS",
    "NODE_NAME",
    "PRIVATE_PATHS",
    "NodeLayout",
    "bridge_name",
    "cni_conflist",
    "containerd_config",
    "holder_script",
    "hosts_toml",
    "kube_proxy_argv",
    "kube_proxy_cleanup_argvs",
    "kubelet_argv",
    "kubelet_config",
    "pod_subnet",
    "to_toml",
]

NODE_NAME: Final = "localhost"
"""The node's name. The API server dials ``<node name>:<kubelet port>`` for logs and exec
(the Hostname address comes first) and the kubelet refuses a loopback node IP, so the name
must resolve to 127.0.0.1, where the kubelet listens."""

FAKE_SYSCTLS: Final = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
    "net.ipv4.ip_forward": "1",
}
"""What the kubelet's ``setupKernelTunables`` wants these sysctls to be; it rewrites any that
differ (``protectKernelDefaults: true`` makes that fatal instead). In the node's mount
namespace, files holding these values are bound over ``/proc/sys/...``, so the kubelet finds
them "already set" and the host's values never change. ``net.ipv4.ip_forward`` is the CNI
bridge plugin's (``isGateway`` turns forwarding on for the whole host, and nothing would turn
it off): the node's pods need none (pod to pod is bridged, pod to a Service that DNATs to
this machine's address is local delivery)."""

PRIVATE_PATHS: Final = (
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/lib/cni",
)
"""Paths the kubelet, containerd and the CNI plugins use whatever they are told (shim
sockets, the device plugin socket, the legacy container log links, the CNI result cache): a
tmpfs in the node's mount namespace."""

KUBE_PROXY_TABLES: Final = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
"""The nftables tables (family, name) kube-proxy's nftables mode keeps its rules in."""

HOST_RULE_TOOLS: Final = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "ipset",
    "modprobe",
)
"""What kube-proxy finds failing on its PATH: in nftables mode it still "cleans up" the
iptables and IPVS modes at start (``platformCleanup`` in cmd/kube-proxy/app/server_linux.go,
v1.34: every ``KUBE-*`` chain of the host, ``modprobe ip_vs`` and an IPVS flush), which would
wreck another cluster's kube-proxy on a developer's machine. Its own rules need only ``nft``."""

REFUSING_TOOL: Final = """#!/bin/sh
echo "rolegate's real node: $(basename "$0") is not run for kube-proxy" \
    "(it would change the host's rules)" >&2
exit 1
"""
"""The script each of :data:`HOST_RULE_TOOLS` is on kube-proxy's PATH."""


@dataclass(frozen=True)
class NodeLayout:
    """Every path of one node under its work directory ``root``."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def certs_d(self) -> Path:
        """containerd's registry ``config_path``: ``<host:port>/hosts.toml`` each."""
        return self.root / "containerd" / "certs.d"

    @property
    def socket(self) -> Path:
        """containerd's gRPC socket (the CRI endpoint the kubelet and crictl use)."""
        return self.root / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.kubelet_dir / "config.json"

    @property
    def fake_sysctls(self) -> Path:
        return self.root / "fake-sysctl"


BRIDGE_PREFIX: Final = "rgnode"
"""The name prefix of every real node's CNI bridge."""


def bridge_name(seed: int) -> str:
    """The CNI bridge of one node: ``rgnode<seed % 100000>`` (at most 11 characters, under
    the kernel's 15)."""
    return f"{BRIDGE_PREFIX}{seed % 100_000}"


def pod_subnet(seed: int) -> str:
    """The pod subnet of one node: ``10.245.<seed % 256>.0/24``; 10.244.0.0/16 is kwok's
    fake pod range and 10.88.0.0/16 podman's."""
    return f"10.245.{seed % 256}.0/24"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f"'{key}'"


def to_toml(table: Mapping[str, Any], _prefix: str = "") -> str:
    """A TOML document of ``table``: str, bool, int and lists of them as values, nested
    mappings as ``[a.'b.c']`` tables (keys with dots or colons single-quoted).

    Raises:
        TypeError: a value of another type.
    """
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not _is_table(v)]
    for key, value in table.items():
        if _is_table(value):
            name = f"{_prefix}.{_toml_key(key)}" if _prefix else _toml_key(key)
            lines += ["", f"[{name}]", to_toml(value, name).rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def containerd_config(
    layout: NodeLayout, *, cni_bin: Path, runc: Path, sandbox_image: str
) -> dict[str, Any]:
    """containerd's config (version 3) with every path under ``layout.root``; write it with
    :func:`to_toml`. Source: containerd v2.2 docs/cri/config.md."""
    cri_runtime = "io.containerd.cri.v1.runtime"
    return {
        "version": 3,
        "root": str(layout.containerd_root),
        "state": str(layout.containerd_state),
        "disabled_plugins": [
            "io.containerd.nri.v1.nri",
            "io.containerd.internal.v1.opt",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ],
        "grpc": {"address": str(layout.socket)},
        "ttrpc": {"address": f"{layout.socket}.ttrpc"},
        "debug": {"address": str(layout.root / "containerd-debug.sock")},
        "plugins": {
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": sandbox_image},
                "registry": {"config_path": str(layout.certs_d)},
            },
            cri_runtime: {
                "enable_selinux": False,
                # The CRI asks for oom_score_adj -998 for sandboxes; lowering it needs
                # CAP_SYS_RESOURCE, and without it runc fails ("can't get final child's PID
                # from pipe: EOF"). Restricted, it is clamped to containerd's own.
                "restrict_oom_score_adj": True,
                "netns_mounts_under_state_dir": True,  # not /var/run/netns
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {
                                "SystemdCgroup": False,
                                "BinaryName": str(runc),
                                "Root": str(layout.runc_root),  # else /run/containerd/runc
                            },
                        }
                    },
                },
                "cni": {"bin_dirs": [str(cni_bin)], "conf_dir": str(layout.cni_conf_dir)},
            },
            "io.containerd.grpc.v1.cri": {
                # exec, attach and port-forward stream through here: loopback, any port.
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
            },
        },
    }


def hosts_toml(registry: str) -> dict[str, Any]:
    """containerd's ``certs.d/<registry>/hosts.toml`` for a plain-HTTP registry
    ``host:port`` (pull and resolve). Source: containerd docs/hosts.md."""
    url = f"http://{registry}"
    return {"server": url, "host": {url: {"capabilities": ["pull", "resolve"]}}}


def cni_conflist(*, bridge: str, subnet: str, ipam_dir: Path) -> dict[str, Any]:
    """The pod network: a bridge with host-local IPAM in ``subnet``, and portmap. No IP
    masquerade, so the bridge plugin writes no iptables rules."""
    return {
        "cniVersion": "1.0.0",
        "name": "rolegate-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: NodeLayout, *, port: int, healthz_port: int) -> dict[str, Any]:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of a node on loopback with
    cgroup v1 and no QoS cgroups; every writable path under ``layout.root``.

    ``port`` (the kubelet API, which the API server calls for logs and exec) and
    ``healthz_port`` are on 127.0.0.1.
    """
    sock = f"unix://{layout.socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        # The API server has no kubelet client certificate to present.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "failCgroupV1": False,
        "localStorageCapacityIsolation": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Else KUBE-FIREWALL and the KUBE-KUBELET-CANARY chains in the host's iptables.
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(layout.kubelet_dir / "pod-logs"),  # else /var/log/pods
        "volumePluginDir": str(layout.kubelet_dir / "volume-plugins"),
        "clusterDomain": "cluster.local",
        "serializeImagePulls": False,
        "registerNode": True,
    }


def kubelet_argv(kubelet: Path, layout: NodeLayout, *, kubeconfig: Path) -> list[str]:
    """The kubelet's command line; ``--cert-dir`` because its default ignores --root-dir."""
    return [
        str(kubelet),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={layout.kubelet_dir / 'root'}",
        f"--cert-dir={layout.kubelet_dir / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        "--v=1",
    ]


def kube_proxy_argv(
    kube_proxy: Path,
    *,
    kubeconfig: Path,
    cluster_cidr: str,
    metrics_port: int,
    healthz_port: int,
) -> list[str]:
    """kube-proxy in nftables mode (its rules live in its own ``kube-proxy`` tables; see
    :func:`kube_proxy_cleanup_argvs`), without touching conntrack sysctls; needs ``nft`` on
    PATH, and :data:`HOST_RULE_TOOLS` refusing (see there)."""
    return [
        str(kube_proxy),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        "--proxy-mode=nftables",
        f"--cluster-cidr={cluster_cidr}",
        "--bind-address=127.0.0.1",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        f"--healthz-bind-address=127.0.0.1:{healthz_port}",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--v=1",
    ]


def kube_proxy_cleanup_argvs(listed_tables: str) -> list[list[str]]:
    """The ``nft delete table`` commands that remove kube-proxy's tables among
    ``listed_tables`` (``nft list tables`` output). Not ``kube-proxy --cleanup``: that also
    deletes every ``KUBE-*`` iptables chain and flushes IPVS on the host (see
    :data:`HOST_RULE_TOOLS`)."""
    present = {tuple(line.split()[1:3]) for line in listed_tables.splitlines() if line.strip()}
    return [
        ["nft", "delete", "table", family, name]
        for family, name in KUBE_PROXY_TABLES
        if (family, name) in present
    ]


def holder_script(*, fake_sysctls: Path, names: Sequence[str], private: Sequence[str]) -> str:
    """The ``sh -c`` script the mount-namespace holder runs (under ``unshare --mount
    --propagation private``): bind ``fake_sysctls/<name>`` over ``/proc/sys/<name with / for
    .>`` for each of ``names``, mount a tmpfs on each of ``private`` (created when missing),
    then ``exec sleep infinity``. Any failed step ends it (``set -e``)."""
    steps = ["set -e"]
    for name in names:
        source = shlex.quote(str(fake_sysctls / name))
        target = shlex.quote("/proc/sys/" + name.replace(".", "/"))
        steps.append(f"mount --bind {source} {target}")
    for path in private:
        quoted = shlex.quote(path)
        steps.append(f"mkdir -p {quoted}")
        steps.append(f"mount -t tmpfs -o size=64m,mode=0755 tmpfs {quoted}")
    steps.append("echo holder ready")
    steps.append("exec sleep infinity")
    return "\n".join(steps)
