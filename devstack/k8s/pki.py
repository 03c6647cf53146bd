"""The throwaway PKI and kubeconfigs of one test control plane.

This module owns every key and certificate the harness hands to the components: a CA, the
API server's serving certificate (127.0.0.1, localhost and the in-cluster service names),
client certificates (the admin in group ``system:masters``; kube-controller-manager and
kube-scheduler under their own names so the bootstrap RBAC roles apply), the service-account
signing key pair, and kubeconfig files that embed them. Keys are ECDSA P-256: generating one
takes a millisecond, where RSA-2048 takes tens.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ClientCert",
    "Pki",
    "generate",
    "issue_client",
    "write_kubeconfig",
]

SERVICE_CIDR: Final = "10.96.0.0/24"
"""The ClusterIP range given to kube-apiserver; its first address is ``kubernetes.default``."""
_VALIDITY: Final = datetime.timedelta(days=2)
_SERVER_NAMES: Final = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True, kw_only=True)
class ClientCert:
    """A client certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True, kw_only=True)
class Pki:
    """Paths of the PEM files of one control plane's PKI (all under one directory)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin: ClientCert
    controller_manager: ClientCert
    scheduler: ClientCert
    service_account_key: Path
    """The private key kube-apiserver signs tokens with (and kube-controller-manager too)."""
    service_account_pub: Path
    """Its public key, which kube-apiserver verifies tokens with."""


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _issue_client(
    *,
    directory: Path,
    name: str,
    user: str,
    groups: tuple[str, ...],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> ClientCert:
    key = _new_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    )
    cert = (
        _builder(subject, ca.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = ClientCert(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.key, key)
    return paths


def issue_client(keys: Pki, name: str, user: str, groups: tuple[str, ...] = ()) -> ClientCert:
    """A client certificate for ``user`` in ``groups`` (Kubernetes reads the CN as the user
    and each O as a group), signed by ``keys``' CA, written as ``<name>.crt``/``.key`` in
    ``keys.dir``; valid from five minutes ago for two days.

    Raises:
        OSError: the CA cannot be read or the files written.
        ValueError: the CA key is not an EC key (this module only makes EC keys).
    """
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(keys.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{keys.ca_key} is not an EC private key")
    return _issue_client(
        directory=keys.dir,
        name=name,
        user=user,
        groups=groups,
        ca=ca,
        ca_key=ca_key,
        now=datetime.datetime.now(datetime.UTC),
    )


def generate(directory: Path) -> Pki:
    """Create a fresh CA and every certificate and key of a control plane in ``directory``.

    Certificates are valid from five minutes ago for two days.

    Raises:
        OSError: ``directory`` cannot be created or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rolegate-test-ca")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    ca_cert_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key_path, ca_key)

    serving_key = _new_key()
    service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in _SERVER_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
    serving = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            ca.subject,
            serving_key.public_key(),
            now,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    serving_cert_path, serving_key_path = directory / "apiserver.crt", directory / "apiserver.key"
    serving_cert_path.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    _write_key(serving_key_path, serving_key)

    sa_key = _new_key()
    sa_key_path, sa_pub_path = directory / "sa.key", directory / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def client(name: str, user: str, groups: tuple[str, ...] = ()) -> ClientCert:
        return _issue_client(
            directory=directory, name=name, user=user, groups=groups, ca=ca, ca_key=ca_key, now=now
        )

    return Pki(
        dir=directory,
        ca_cert=ca_cert_path,
        ca_key=ca_key_path,
        serving_cert=serving_cert_path,
        serving_key=serving_key_path,
        admin=client("admin", "rolegate-admin", ("system:masters",)),
        controller_manager=client("controller-manager", "system:kube-controller-manager"),
        scheduler=client("scheduler", "system:kube-scheduler"),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write_kubeconfig(
    path: Path, *, server: str, ca_cert: Path, client: ClientCert, name: str = "rolegate-test"
) -> Path:
    """Write a self-contained kubeconfig (certificates embedded) for ``client`` at ``server``.

    ``server`` is a URL such as ``https://127.0.0.1:6443``. Returns ``path``.

    Raises:
        OSError: a PEM file cannot be read or ``path`` cannot be written.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
