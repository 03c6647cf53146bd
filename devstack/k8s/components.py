"""Command lines and health probes of the control-plane components.

This module owns how etcd, kube-apiserver, kube-controller-manager and kube-scheduler are
configured for tests: everything on 127.0.0.1, etcd over plain HTTP on loopback (no fsync:
its data dies with the test), the API server with client-certificate authentication,
``--authorization-mode=Node,RBAC`` and the ServiceAccount admission plugin, and the two
controllers authenticating with their own certificates so the bootstrap RBAC roles apply.
The functions are pure: paths and ports in, argv out. (kwok's argv lives in
:mod:`devstack.k8s.nodes`, next to the nodes it manages.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from devstack.k8s.pki import SERVICE_CIDR, Pki

__all__ = [
    "SERVICE_ACCOUNT_ISSUER",
    "apiserver_argv",
    "controller_manager_argv",
    "etcd_argv",
    "scheduler_argv",
]

SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
_VERBOSITY: Final = "--v=1"


def etcd_argv(*, etcd: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """A single-member etcd serving clients on ``http://127.0.0.1:<client_port>``."""
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    return [
        str(etcd),
        "--name=rolegate",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=rolegate={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(
    *, binary: Path, etcd_url: str, port: int, cert_dir: Path, keys: Pki
) -> list[str]:
    """kube-apiserver on ``https://127.0.0.1:<port>``, trusting client certs of ``keys``' CA."""
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={keys.serving_cert}",
        f"--tls-private-key-file={keys.serving_key}",
        f"--client-ca-file={keys.ca_cert}",
        # Front-proxy (aggregation) settings; no certificate carries the allowed name, so no
        # client can assert identities through these headers. Without them the API server
        # logs an error about the missing request-header CA every few milliseconds.
        f"--requestheader-client-ca-file={keys.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={keys.service_account_pub}",
        f"--service-account-signing-key-file={keys.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # Added to the default set (which has ServiceAccount already): say so explicitly.
        "--enable-admission-plugins=ServiceAccount,NodeRestriction",
        "--allow-privileged=true",
        "--profiling=false",
        _VERBOSITY,
    ]


def _delegated_auth(kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    ]


def controller_manager_argv(
    *, binary: Path, kubeconfig: Path, port: int, cert_dir: Path, keys: Pki
) -> list[str]:
    """kube-controller-manager with the service-account key and root CA, so its token and
    service-account controllers mint tokens; one controller credential per controller."""
    return [
        str(binary),
        *_delegated_auth(kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        f"--service-account-private-key-file={keys.service_account_key}",
        f"--root-ca-file={keys.ca_cert}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={keys.ca_cert}",
        f"--cluster-signing-key-file={keys.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        _VERBOSITY,
    ]


def scheduler_argv(*, binary: Path, kubeconfig: Path, port: int, cert_dir: Path) -> list[str]:
    """kube-scheduler with its default profile (taints, tolerations and extended resources
    such as ``nvidia.com/gpu`` are honoured by the default plugins)."""
    return [
        str(binary),
        *_delegated_auth(kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--leader-elect=false",
        _VERBOSITY,
    ]
