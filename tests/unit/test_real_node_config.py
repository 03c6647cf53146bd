"""The real node's files and command lines (devstack.k8s.nodeconfig), without a node."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from devstack.k8s import nodeconfig
from devstack.k8s.nodeconfig import NodeLayout

LAYOUT = NodeLayout(Path("/tmp/rolegate-k8s-x/node"))


def test_to_toml_round_trips_through_tomllib() -> None:
    table = {
        "version": 3,
        "flag": False,
        "names": ["a", 'b"c'],
        "plugins": {"io.containerd.cri.v1.images": {"pinned_images": {"sandbox": "p:1"}}},
        "host": {"http://127.0.0.1:5001": {"capabilities": ["pull"]}},
    }
    assert tomllib.loads(nodeconfig.to_toml(table)) == table


def test_to_toml_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="float"):
        nodeconfig.to_toml({"x": 1.5})


def test_containerd_config_keeps_everything_under_the_work_dir() -> None:
    config = nodeconfig.containerd_config(
        LAYOUT, cni_bin=Path("/c/cni"), runc=Path("/usr/sbin/runc"), sandbox_image="p:3.10"
    )
    parsed = tomllib.loads(nodeconfig.to_toml(config))
    runtime = parsed["plugins"]["io.containerd.cri.v1.runtime"]
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert parsed["version"] == 3
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runc == {
        "SystemdCgroup": False,
        "BinaryName": "/usr/sbin/runc",
        "Root": str(LAYOUT.root / "runc"),
    }
    assert parsed["grpc"]["address"] == str(LAYOUT.socket)
    for key in ("root", "state"):
        assert parsed[key].startswith(str(LAYOUT.root))
    images = parsed["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "p:3.10"
    assert images["registry"]["config_path"] == str(LAYOUT.certs_d)


def test_hosts_toml_allows_plain_http() -> None:
    parsed = tomllib.loads(nodeconfig.to_toml(nodeconfig.hosts_toml("127.0.0.1:5001")))
    assert parsed == {
        "server": "http://127.0.0.1:5001",
        "host": {"http://127.0.0.1:5001": {"capabilities": ["pull", "resolve"]}},
    }


def test_cni_conflist_bridge_without_masquerade() -> None:
    conflist = nodeconfig.cni_conflist(
        bridge=nodeconfig.bridge_name(1234567), subnet="10.245.7.0/24", ipam_dir=Path("/i")
    )
    bridge = json.loads(json.dumps(conflist))["plugins"][0]
    assert bridge["bridge"] == "rgnode34567"
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.245.7.0/24"}]]


@pytest.mark.parametrize("seed", [0, 1, 99_999, 2**22 - 1])
def test_bridge_names_fit_the_kernel_limit(seed: int) -> None:
    assert len(nodeconfig.bridge_name(seed)) <= 15
    assert nodeconfig.pod_subnet(seed).startswith("10.245.")


def test_kubelet_config_stays_off_the_host() -> None:
    config = nodeconfig.kubelet_config(LAYOUT, port=40001, healthz_port=40002)
    assert config["makeIPTablesUtilChains"] is False
    assert config["address"] == config["healthzBindAddress"] == "127.0.0.1"
    assert (config["port"], config["healthzPort"], config["readOnlyPort"]) == (40001, 40002, 0)
    assert config["containerRuntimeEndpoint"] == f"unix://{LAYOUT.socket}"
    for key in ("podLogsDir", "volumePluginDir"):
        assert config[key].startswith(str(LAYOUT.root))


def test_kubelet_argv_names_the_node_localhost() -> None:
    argv = nodeconfig.kubelet_argv(Path("/b/kubelet"), LAYOUT, kubeconfig=Path("/k"))
    assert "--hostname-override=localhost" in argv
    assert f"--cert-dir={LAYOUT.root / 'kubelet' / 'pki'}" in argv


def test_kube_proxy_nftables_and_cleanup() -> None:
    argv = nodeconfig.kube_proxy_argv(
        Path("/b/kube-proxy"),
        kubeconfig=Path("/k"),
        cluster_cidr="10.245.1.0/24",
        metrics_port=1,
        healthz_port=2,
    )
    assert "--proxy-mode=nftables" in argv
    assert "--cleanup" not in argv
    listed = "table ip filter\ntable ip kube-proxy\ntable ip6 kube-proxy\ntable inet x\n"
    assert nodeconfig.kube_proxy_cleanup_argvs(listed) == [
        ["nft", "delete", "table", "ip", "kube-proxy"],
        ["nft", "delete", "table", "ip6", "kube-proxy"],
    ]
    assert nodeconfig.kube_proxy_cleanup_argvs("table ip filter\n") == []


def test_holder_script_fakes_sysctls_and_mounts_tmpfs() -> None:
    script = nodeconfig.holder_script(
        fake_sysctls=Path("/w/fake sysctl"),
        names=["kernel.panic"],
        private=["/run/containerd"],
    )
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert "mount --bind '/w/fake sysctl/kernel.panic' /proc/sys/kernel/panic" in lines
    assert "mount -t tmpfs -o size=64m,mode=0755 tmpfs /run/containerd" in lines
    assert lines[-1] == "exec sleep infinity"
