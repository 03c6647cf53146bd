"""A real Kubernetes control plane on loopback, for tests and by hand.

This module owns the start-up, readiness and teardown of one control plane: etcd and
kube-apiserver (RBAC and the ServiceAccount admission plugin on), and with ``full=True``
kube-controller-manager, kube-scheduler and kwok with simulated CPU and GPU nodes. Everything
lives in one temporary directory (PKI, kubeconfigs, etcd data, component logs) and every
process in its own process group; leaving the ``with`` block (normally, on an exception, on
Ctrl-C, or on SIGTERM, which the harness turns into KeyboardInterrupt) stops them all
(SIGTERM, then SIGKILL) and removes the directory.

    with ControlPlane(full=True) as cp:
        cp.kubectl(["get", "nodes"])          # CompletedProcess; raises CommandError on failure

Fault controls (restarts, compaction, a relay a test can cut, the audit log) come from
:class:`devstack.k8s.faults.Faults`, which ``ControlPlane`` mixes in.

By hand: ``python -m devstack up [--full]`` prints the kubeconfig and waits for Ctrl-C. The
binaries come from build.sh (see :mod:`devstack.k8s.build`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from devstack import http, process
from devstack.k8s import build, components, faults, nodes, pki, realnode
from devstack.k8s.faults import ApiRelay
from devstack.poll import wait_until
from devstack.process import Process, free_ports

__all__ = ["TMP_PREFIX", "ApiRelay", "CommandError", "ControlPlane", "ControlPlaneError"]

log = logging.getLogger(__name__)

TMP_PREFIX: Final = "rolegate-k8s-"
"""The prefix of every control plane's temporary directory (under the system's tmp)."""
_POLL_S: Final = 0.1
_LOG_TAIL_LINES: Final = 30
_live: weakref.WeakSet[ControlPlane] = weakref.WeakSet()


class ControlPlaneError(RuntimeError):
    """The control plane failed to start; the message holds the components' log tails."""


class CommandError(subprocess.CalledProcessError):
    """kubectl or helm exited non-zero; unlike its base class, str() includes stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}\nstdout:\n{self.output}"


@atexit.register
def _stop_leftovers() -> None:
    for plane in list(_live):
        plane.stop()


class ControlPlane(faults.Faults):
    """One control plane on 127.0.0.1 with free ports; a context manager.

    Args:
        full: also run kube-controller-manager, kube-scheduler and kwok with ``node_specs``.
        node_specs: the simulated nodes (full only); default :func:`nodes.default_nodes`.
        bin_dir: where the binaries are; default :func:`build.bin_dir` (not built here).
        startup_timeout_s: seconds allowed for each readiness wait.
        keep_tmp: keep the temporary directory after stop (for debugging).
        audit: write an audit log of Secret, LLMRole, TokenReview and SubjectAccessReview
            requests (metadata only); read it with :meth:`audit_events`.
        apiserver_args: more kube-apiserver flags (e.g. ``--watch-cache=false``, so watches
            are served by etcd and :meth:`compact_etcd` makes old resourceVersions expire).
        real_node: (full only) also a real node ``localhost`` (kubelet, containerd, runc,
            kube-proxy: :mod:`devstack.k8s.realnode`), as :attr:`node`; True for the default
            :class:`~devstack.k8s.realnode.NodeOptions`.
    """

    def __init__(
        self,
        *,
        full: bool = False,
        node_specs: Sequence[nodes.NodeSpec] | None = None,
        bin_dir: Path | None = None,
        startup_timeout_s: float = 60.0,
        keep_tmp: bool = False,
        audit: bool = False,
        apiserver_args: Sequence[str] = (),
        real_node: bool | realnode.NodeOptions = False,
    ) -> None:
        self.full: Final = full
        self.node_specs: Final = tuple(
            node_specs if node_specs is not None else nodes.default_nodes() if full else ()
        )
        self.bin_dir: Final = bin_dir or build.bin_dir()
        self.startup_timeout_s = startup_timeout_s
        self.keep_tmp = keep_tmp
        self.audit = audit
        self.apiserver_args: Final = tuple(apiserver_args)
        self.node_options = realnode.NodeOptions() if real_node is True else real_node or None
        self.node: realnode.RealNode | None = None
        if self.node_options is not None and not full:
            raise ValueError("a real node needs the full control plane (full=True)")
        self.components: dict[str, Process] = {}
        self._relays: list[ApiRelay] = []
        self._etcd_url = ""
        self._tmp: Path | None = None
        self._pki: pki.Pki | None = None
        self._port = 0
        self._signals = contextlib.ExitStack()
        self._ssl: ssl.SSLContext | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def tmp_dir(self) -> Path:
        """The directory holding PKI, kubeconfigs, etcd data and ``logs/<component>.log``."""
        if self._tmp is None:
            raise RuntimeError("control plane not started")
        return self._tmp

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (group system:masters) for this control plane."""
        return self.tmp_dir / "kubeconfig"

    @property
    def server(self) -> str:
        """The API server's URL, ``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def pki(self) -> pki.Pki:
        if self._pki is None:
            raise RuntimeError("control plane not started")
        return self._pki

    def pids(self) -> dict[str, int]:
        """Process id of each started component, by name."""
        return {name: c.pid for name, c in self.components.items() if c.pid is not None}

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running component in bytes, by name."""
        return {name: c.rss_bytes() for name, c in self.components.items() if c.running()}

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, the binaries first on PATH, and helm's and kubectl's
        cache/config dirs inside the temporary directory."""
        tmp = self.tmp_dir
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "KUBECACHEDIR": str(tmp / "kube-cache"),
            "HELM_CACHE_HOME": str(tmp / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(tmp / "helm" / "config"),
            "HELM_DATA_HOME": str(tmp / "helm" / "data"),
        }

    def kubectl(
        self,
        args: Sequence[str],
        *,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (``--namespace`` prepended when given).

        Raises:
            CommandError: kubectl exited non-zero and ``check`` is true.
            subprocess.TimeoutExpired: it ran longer than ``timeout_s`` seconds.
        """
        return self._run("kubectl", args, namespace, input=input, check=check, timeout_s=timeout_s)

    def helm(
        self,
        args: Sequence[str],
        *,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane; as :meth:`kubectl`."""
        return self._run("helm", args, namespace, input=input, check=check, timeout_s=timeout_s)

    def api(
        self, path: str, *, method: str = "GET", body: Any = None, timeout_s: float = 10.0
    ) -> Any:
        """Call the API server as admin and return the decoded JSON answer.

        Raises:
            urllib.error.HTTPError: a non-2xx answer (``.code`` holds the status).
            OSError: the server cannot be reached.
        """
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._ssl, timeout=timeout_s) as answer:
            return json.loads(answer.read() or b"null")

    def wait_for(
        self, what: str, predicate: Callable[[], bool], *, timeout_s: float | None = None
    ) -> None:
        """Poll ``predicate`` until true; meanwhile check no component died.

        Exceptions from ``predicate`` count as "not yet" (OSError, ValueError, KeyError).

        Raises:
            devstack.process.ProcessDied: a component exited.
            TimeoutError: not true within ``timeout_s`` (default: startup_timeout_s) seconds.
        """

        def check() -> None:
            for component in self.components.values():
                component.check_running()

        wait_until(
            predicate,
            timeout_s=timeout_s or self.startup_timeout_s,
            what=what,
            poll_s=_POLL_S,
            tolerate=(OSError, ValueError, KeyError),
            check=check,
        )

    def log_tails(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` of every component's log, each under a header."""
        return "\n".join(
            f"----- {name} ({c.log_path}) -----\n{c.log_tail(lines)}"
            for name, c in self.components.items()
        )

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self._signals.enter_context(process.sigterm_raises_interrupt())
        try:
            self.start()
        except BaseException:
            self._signals.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._signals.close()

    def start(self) -> None:
        """Start every component and wait until the API answers (and, full, nodes are Ready).

        Raises:
            ControlPlaneError: a binary is missing, a component died or did not become ready;
                the message holds every component's log tail. Nothing is left running.
        """
        if self._tmp is not None:
            raise RuntimeError("a ControlPlane starts once; create a new one")
        missing = [b for b in build.BINARIES if not (self.bin_dir / b).is_file()]
        if missing:
            raise ControlPlaneError(
                f"missing {', '.join(missing)} in {self.bin_dir}; run {build.BUILD_SCRIPT}"
            )
        process.sweep_orphaned_dirs(TMP_PREFIX)
        _live.add(self)
        self._tmp = process.owned_tmp_dir(TMP_PREFIX)
        (self._tmp / "logs").mkdir()
        started = time.monotonic()
        try:
            self._start_core()
            log.info("apiserver ready at %s in %.1f s", self.server, time.monotonic() - started)
            if self.full:
                self._start_full()
                log.info("full control plane ready in %.1f s", time.monotonic() - started)
        except BaseException as error:
            if isinstance(error, Exception):
                message = (
                    f"control plane failed to start: {error}\n"
                    f"(temporary dir {self._tmp})\n{self.log_tails()}"
                )
                self.stop()
                raise ControlPlaneError(message) from error
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component and remove the temporary directory: the real node first,
        then the API's clients side by side, then the apiserver, then etcd.

        Safe to call more than once. SIGINT and SIGTERM are held back meanwhile (in the main
        thread), so a Ctrl-C cannot cut the cleanup short; they are delivered once it is done.
        """
        with process.signals_deferred():
            if self.components:
                log.info("stopping the control plane")
            if self.node is not None:  # its teardown cleans the host: before all else
                self.node.stop()
            try:
                for relay in self._relays:
                    relay.close()
            finally:  # a relay that fails to close must not leave etcd and the apiserver
                self._relays.clear()
                # The API's clients side by side (none needs another to stop), then the
                # apiserver, then etcd: a stop takes at most 3 graces, not 5.
                core = [n for n in ("kube-apiserver", "etcd") if n in self.components]
                clients = [c for n, c in self.components.items() if n not in core]
                for component in clients:
                    component.terminate()
                for component in [*reversed(clients), *(self.components[n] for n in core)]:
                    component.stop(grace_s=10.0)
            if self._tmp is not None and not self.keep_tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            elif self._tmp is not None:
                process.disown_dir(self._tmp)  # kept for debugging: never swept
            _live.discard(self)

    # -- internals --------------------------------------------------------------------------

    def _run(
        self,
        tool: str,
        args: Sequence[str],
        namespace: str | None,
        *,
        input: str | None,
        check: bool,
        timeout_s: float,
    ) -> subprocess.CompletedProcess[str]:
        ns = ["--namespace", namespace] if namespace else []
        argv = [str(self.bin_dir / tool), *ns, *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout_s
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def _wait_etcd(self) -> None:
        self.wait_for(
            "etcd /health", lambda: http.get_json(f"{self._etcd_url}/health")["health"] == "true"
        )

    def _wait_apiserver(self) -> None:
        self.wait_for(
            "kube-apiserver /readyz",
            lambda: http.get_text(f"{self.server}/readyz", context=self._ssl) == "ok",
        )

    def _add(self, name: str, argv: list[str]) -> Process:
        component = Process(name, argv, log_path=self.tmp_dir / "logs" / f"{name}.log")
        self.components[name] = component
        component.start()
        return component

    def _start_core(self) -> None:
        tmp = self.tmp_dir
        self._pki = keys = pki.generate(tmp / "pki")
        etcd_port, peer_port, self._port = free_ports(3)
        self._ssl = ssl.create_default_context(cafile=str(keys.ca_cert))
        self._ssl.load_cert_chain(str(keys.admin.cert), str(keys.admin.key))
        pki.write_kubeconfig(
            self.kubeconfig, server=self.server, ca_cert=keys.ca_cert, client=keys.admin
        )
        self._etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._add(
            "etcd",
            components.etcd_argv(
                etcd=self.bin_dir / "etcd",
                data_dir=tmp / "etcd",
                client_port=etcd_port,
                peer_port=peer_port,
            ),
        )
        self._wait_etcd()
        extra = list(self.apiserver_args)
        if self.audit:
            extra += faults.audit_args(tmp)
        self._add(
            "kube-apiserver",
            [
                *components.apiserver_argv(
                    binary=self.bin_dir / "kube-apiserver",
                    etcd_url=self._etcd_url,
                    port=self._port,
                    cert_dir=tmp / "apiserver-certs",
                    keys=keys,
                ),
                *extra,
            ],
        )
        self._wait_apiserver()
        self.wait_for("namespace default", lambda: bool(self.api("/api/v1/namespaces/default")))
        if not self.full:
            # No controller-manager, so no service-account controller: add what it would.
            self.api(
                "/api/v1/namespaces/default/serviceaccounts",
                method="POST",
                body={
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "default"},
                },
            )

    def _start_full(self) -> None:
        tmp, keys = self.tmp_dir, self.pki
        kcm_port, scheduler_port, kwok_port = free_ports(3)

        def kubeconfig(name: str, client: pki.ClientCert) -> Path:
            return pki.write_kubeconfig(
                tmp / f"{name}.kubeconfig", server=self.server, ca_cert=keys.ca_cert, client=client
            )

        self._add(
            "kube-controller-manager",
            components.controller_manager_argv(
                binary=self.bin_dir / "kube-controller-manager",
                kubeconfig=kubeconfig("controller-manager", keys.controller_manager),
                port=kcm_port,
                cert_dir=tmp / "kcm-certs",
                keys=keys,
            ),
        )
        self._add(
            "kube-scheduler",
            components.scheduler_argv(
                binary=self.bin_dir / "kube-scheduler",
                kubeconfig=kubeconfig("scheduler", keys.scheduler),
                port=scheduler_port,
                cert_dir=tmp / "scheduler-certs",
            ),
        )
        self._add(
            "kwok",
            nodes.kwok_argv(
                kwok=self.bin_dir / "kwok",
                kubeconfig=self.kubeconfig,
                stages=build.kwok_stages_file(),
                port=kwok_port,
            ),
        )
        for index, spec in enumerate(self.node_specs):
            self.api("/api/v1/nodes", method="POST", body=nodes.node_manifest(spec, index=index))
        insecure = http.insecure_tls()
        for name, url, context in (
            ("kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz", insecure),
            ("kube-scheduler", f"https://127.0.0.1:{scheduler_port}/healthz", insecure),
            ("kwok", f"http://127.0.0.1:{kwok_port}/healthz", None),
        ):
            self.wait_for(f"{name} /healthz", _answers_ok(url, context))
        self.wait_for(
            "service account default/default",
            lambda: bool(self.api("/api/v1/namespaces/default/serviceaccounts/default")),
        )
        wanted = {spec.name for spec in self.node_specs}
        self.wait_for(
            f"{len(wanted)} Ready nodes without lifecycle taints",
            lambda: wanted <= nodes.ready_nodes(self.api("/api/v1/nodes")["items"]),
        )
        if self.node_options is not None:
            self.node = realnode.RealNode(
                tmp / "node",
                options=self.node_options,
                kubectl=self.bin_dir / "kubectl",
                startup_timeout_s=self.startup_timeout_s,
            )
            realnode.start_for(self.node, keys, server=self.server)


def _answers_ok(url: str, context: ssl.SSLContext | None) -> Callable[[], bool]:
    return lambda: http.get_text(url, context=context) == "ok"
