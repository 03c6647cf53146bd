"""``python -m devstack``: the local stack by hand.

    python -m devstack build [k8s|node|llama|litellm|tensorzero|portkey|nginx ...]
                                                        build what is missing (default: all)
    python -m devstack up [--full [--node]] [--crd]          a control plane until Ctrl-C
    python -m devstack status                           what is cached, and how big

``build`` prints progress lines only; each build's whole output stays in its build log in the
cache (its path is printed, and the last lines come with a failure). ``up`` builds the
Kubernetes binaries first when they are missing, then prints ``export KUBECONFIG=... PATH=...``
and a line ``READY {json}`` (kubeconfig, tmp_dir, server, pids by component; with ``--node``
also the real node's pids under ``node_pids``), and runs until
Ctrl-C or SIGTERM, which stop every process and remove the temporary directory.

Exit status: 0 done (``up``: stopped by Ctrl-C or SIGTERM), 1 a build or start failed (the
message says why), 2 bad arguments, 130 a build interrupted by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from devstack.apt import AptUnavailable
from devstack.cache import BuildFailed, cache_root
from devstack.image import build as image_build
from devstack.k8s import build as k8s_build
from devstack.k8s import nodebuild
from devstack.k8s.controlplane import CommandError, ControlPlane, ControlPlaneError
from devstack.llama import build as llama_build
from devstack.peers import litellm, nginx, portkey, tensorzero
from devstack.process import ProcessDied, sigterm_raises_interrupt, wait_for_interrupt
from devstack.stack import install_crd

__all__ = ["ENTRIES", "Entry", "main"]


@dataclass(frozen=True)
class Entry:
    """One cached build: its name on the command line, what it is, and its build module's
    ``is_built``, ``ensure`` and cache directory."""

    name: str
    what: str
    is_built: Callable[[], bool]
    ensure: Callable[[TextIO | None], Path]
    path: Callable[[], Path]


ENTRIES: Final = (
    Entry(
        "k8s",
        f"Kubernetes {k8s_build.KUBE_VERSION}: etcd, control plane, kubectl, kwok, helm",
        k8s_build.is_built,
        k8s_build.ensure,
        k8s_build.cache_dir,
    ),
    Entry(
        "llama",
        f"llama.cpp server (llama-cpp-python {llama_build.VERSION})",
        llama_build.is_built,
        llama_build.ensure,
        llama_build.home,
    ),
    Entry(
        "litellm",
        f"LiteLLM proxy {litellm.LITELLM_VERSION}, the benchmark's peer",
        litellm.is_built,
        litellm.ensure,
        litellm.venv_dir,
    ),
    Entry(
        "tensorzero",
        f"TensorZero gateway {tensorzero.TENSORZERO_VERSION}, the benchmark's peer",
        tensorzero.is_built,
        tensorzero.ensure,
        tensorzero.venv_dir,
    ),
    Entry(
        "portkey",
        f"Portkey's gateway {portkey.PORTKEY_VERSION} (npm), the benchmark's peer",
        portkey.is_built,
        portkey.ensure,
        portkey.install_dir,
    ),
    Entry(
        "nginx",
        f"nginx {nginx.NGINX_VERSION} (Debian's, or the machine's), the benchmark's floor",
        nginx.is_built,
        nginx.ensure,
        nginx.cache_dir,
    ),
    Entry(
        "image",
        f"rolegate's OCI image {image_build.version()} (Debian bookworm, operator and gateway)",
        image_build.is_built,
        image_build.ensure,
        image_build.cache_dir,
    ),
    Entry(
        "node",
        f"a real node: kubelet {k8s_build.KUBE_VERSION}, containerd "
        f"{nodebuild.CONTAINERD_VERSION}, CNI plugins, crictl, pause and test images",
        nodebuild.is_built,
        nodebuild.ensure,
        nodebuild.cache_dir,
    ),
)
_BY_NAME: Final = {entry.name: entry for entry in ENTRIES}


def _size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed); 0 when it is missing."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def build(names: Sequence[str], out: TextIO) -> int:
    """Build the named entries (all when none) that are missing; 1 when one failed."""
    for entry in [_BY_NAME[name] for name in names] or ENTRIES:
        if entry.is_built():
            print(f"{entry.name}: cached in {entry.path()}", file=out, flush=True)
            continue
        print(f"{entry.name}: building {entry.what} ...", file=out, flush=True)
        try:
            entry.ensure(out)
        except BuildFailed as failed:
            print(f"{entry.name}: build failed: {failed}", file=out, flush=True)
            return 1
        print(f"{entry.name}: built in {entry.path()}", file=out, flush=True)
    return 0


def status(out: TextIO) -> int:
    """Print each entry: built, incomplete or missing, its size and its directory."""
    print(f"cache: {cache_root()}", file=out)
    rows = [("NAME", "STATE", "SIZE", "DIRECTORY", "WHAT")]
    for entry in ENTRIES:
        path = entry.path()
        state = "built" if entry.is_built() else "incomplete" if path.exists() else "missing"
        rows.append((entry.name, state, _human(_size(path)), f"{path.name}/", entry.what))
    for row in rows:
        print(f"  {row[0]:<10} {row[1]:<10} {row[2]:>10}  {row[3]:<26} {row[4]}", file=out)
    return 0


def up(*, full: bool, crd: bool, out: TextIO, node: bool = False) -> int:
    """Run a control plane (with ``node``, a real node too) until Ctrl-C or SIGTERM; see the
    module docstring."""
    if build(["k8s", "node"] if node else ["k8s"], sys.stderr) != 0:
        return 1
    try:
        with ControlPlane(full=full, real_node=node) as plane:
            if crd:
                install_crd(plane)
            info = {
                "kubeconfig": str(plane.kubeconfig),
                "tmp_dir": str(plane.tmp_dir),
                "server": plane.server,
                "pids": plane.pids(),
            }
            if plane.node is not None:
                info["node_pids"] = {n: c.pid for n, c in plane.node.components.items()}
            print(f"export KUBECONFIG={plane.kubeconfig} PATH={plane.bin_dir}:$PATH", file=out)
            print("READY " + json.dumps(info), file=out, flush=True)
            print("Ctrl-C to stop", file=sys.stderr, flush=True)
            wait_for_interrupt()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except (ControlPlaneError, ProcessDied, CommandError, TimeoutError, AptUnavailable) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="rolegate's local stack: cached builds and a control plane on loopback",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build what is missing (default: all)")
    build_parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(_BY_NAME))
    up_parser = commands.add_parser("up", help="a control plane on 127.0.0.1 until Ctrl-C")
    up_parser.add_argument(
        "--full",
        action="store_true",
        help="also kube-controller-manager, kube-scheduler and kwok with CPU and GPU nodes",
    )
    up_parser.add_argument(
        "--node",
        action="store_true",
        help="(with --full) also a real node 'localhost': kubelet, containerd, runc, kube-proxy",
    )
    up_parser.add_argument("--crd", action="store_true", help="install the LLMRole CRD")
    commands.add_parser("status", help="what is cached, and how big")
    args = parser.parse_args(argv)
    if getattr(args, "node", False) and not args.full:
        parser.error("--node needs --full (the scheduler and controller-manager)")
    unknown = [name for name in getattr(args, "names", ()) if name not in _BY_NAME]
    if unknown:
        parser.error(f"unknown build {', '.join(unknown)}: choose from {', '.join(_BY_NAME)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with sigterm_raises_interrupt():  # SIGTERM stops a build or a control plane as Ctrl-C does
        try:
            if args.command == "build":
                return build(args.names, sys.stdout)
            if args.command == "up":
                return up(full=args.full, crd=args.crd, out=sys.stdout, node=args.node)
            return status(sys.stdout)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
