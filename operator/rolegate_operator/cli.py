"""``rolegate-operator``: the command line of the control plane.

Owns argument parsing and dispatch. Subcommands:

- ``crd``: print the LLMRole CustomResourceDefinition (YAML) generated from the role API;
  ``make crd`` writes it to ``crds/llmroles.rolegate.dev.yaml``, and with ``--helm`` (the
  same CRD as the Helm chart's template) to ``helm/rolegate/templates/crds/``.
- ``run``: run the operator (``rolegate_operator.main``, imported only then: kopf's import
  is not free).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from rolegate_operator import crd
from rolegate_operator.settings import DEFAULT_BACKEND_RELEASE_S, DEFAULT_RESYNC_S, Settings

__all__ = ["main", "parser"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _secret_name(value: str) -> str:
    """``NAMESPACE/NAME`` of a Secret, checked and returned as given."""
    namespace, _, name = value.partition("/")
    if not (
        _DNS_LABEL.match(namespace)
        and len(namespace) <= 63
        and _DNS_SUBDOMAIN.match(name)
        and len(name) <= 253
    ):
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME")
    return value


def _namespace(value: str) -> str:
    """A namespace name (not a pattern: the operator lists each namespace it serves)."""
    if not (_DNS_LABEL.match(value) and len(value) <= 63):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a namespace name")
    return value


def _name(value: str) -> str:
    """An object name (a DNS subdomain, as a ServiceAccount's)."""
    if not (_DNS_SUBDOMAIN.match(value) and len(value) <= 253):
        raise argparse.ArgumentTypeError(f"{value!r}: expected an object name")
    return value


def _host_port(value: str) -> str:
    """``HOST:PORT`` with a port in 1..65535, returned as given."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return value


def _seconds(value: str) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive number of seconds")
    return seconds


def parser() -> argparse.ArgumentParser:
    """The ``rolegate-operator`` argument parser; ``args.command`` is "crd" or "run".

    ``crd`` sets ``helm`` (bool: the Helm chart's template instead of the plain CRD).

    ``run`` sets: ``namespace`` (list[str] | None), ``all_namespaces`` (bool; one of the
    two is required), ``gateway_config_secret`` ("NAMESPACE/NAME"), ``liveness``
    ("HOST:PORT"), ``resync_interval`` and ``backend_release_delay`` (float seconds),
    ``kubeconfig`` (Path | None),
    ``config_owner`` (str | None), ``log_level``, ``log_format``.
    """
    top = argparse.ArgumentParser(
        prog="rolegate-operator", description="rolegate's control plane for LLMRoles."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    crd_command = commands.add_parser(
        "crd",
        help="print the LLMRole CustomResourceDefinition (YAML)",
        description="Print the LLMRole CRD generated from the role API (rolegate_gateway.api).",
    )
    crd_command.add_argument(
        "--helm",
        action="store_true",
        help="print it as the Helm chart's template (helm/rolegate/templates/crds/): "
        "installed when crds.install, kept on uninstall when crds.keep",
    )
    run = commands.add_parser(
        "run", help="run the operator", description="Reconcile LLMRoles into the gateway config."
    )
    scope = run.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace",
        action="append",
        type=_namespace,
        metavar="NS",
        help="watch LLMRoles in this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch LLMRoles in every namespace"
    )
    run.add_argument(
        "--gateway-config-secret",
        required=True,
        type=_secret_name,
        metavar="NAMESPACE/NAME",
        help="the Secret the operator writes the gateway's config to",
    )
    run.add_argument(
        "--config-owner-service-account",
        dest="config_owner",
        type=_name,
        metavar="NAME",
        help="make this ServiceAccount (in the config Secret's namespace) the Secret's owner, "
        "so that deleting it (helm uninstall) deletes the Secret and the keys it holds",
    )
    run.add_argument(
        "--liveness",
        default="127.0.0.1:8081",
        type=_host_port,
        metavar="HOST:PORT",
        help="where the liveness probe is served (default: %(default)s)",
    )
    run.add_argument(
        "--resync-interval",
        default=DEFAULT_RESYNC_S,
        type=_seconds,
        metavar="SECONDS",
        help="reconcile every role from fresh lists of LLMRoles and Secrets at least this "
        "often: the longest a deletion missed by a broken watch can stay served "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--backend-release-delay",
        default=DEFAULT_BACKEND_RELEASE_S,
        type=_seconds,
        metavar="SECONDS",
        help="keep a backend that no role uses any more this long before deleting it, so "
        "the calls still in flight on it finish (the gateway drains a rebound role's calls "
        "for 2 x timeoutSeconds + 15 s) (default: %(default)s)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="kubeconfig outside a pod (default: the pod's ServiceAccount, $KUBECONFIG, "
        "~/.kube/config)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    return top


def _run(args: argparse.Namespace) -> int:
    from rolegate_operator import main as operator

    namespace, _, name = args.gateway_config_secret.partition("/")
    settings = Settings(
        config_secret=(namespace, name),
        namespaces=tuple(args.namespace or ()),
        resync_s=args.resync_interval,
        backend_release_s=args.backend_release_delay,
        kubeconfig=args.kubeconfig,
        config_owner=args.config_owner,
    )
    return operator.run(
        settings, liveness=args.liveness, log_level=args.log_level, log_format=args.log_format
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``) and run the command.

    Returns the exit status; argparse exits with 2 on bad arguments.
    """
    args = parser().parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(crd.helm_template() if args.helm else crd.crd_yaml())
        return 0
    return _run(args)
