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
from rolegate_operator.settings import (
    DEFAULT_BACKEND_RELEASE_S,
    DEFAULT_LEASE_DURATION_S,
    DEFAULT_LEASE_NAME,
    DEFAULT_RENEW_DEADLINE_S,
    DEFAULT_RESYNC_S,
    DEFAULT_RETRY_PERIOD_S,
    LeaderElection,
    Settings,
    new_identity,
    pod_namespace,
)

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
    ``kubeconfig`` (Path | None), ``await_gateways`` (bool),
    ``config_owner`` (str | None), ``log_level``, ``log_format``, ``leader_elect`` (bool),
    ``leader_election_namespace`` (str | None: the pod's), ``leader_election_lease_name``,
    ``lease_duration``, ``renew_deadline``, ``retry_period`` (float seconds; checked in
    ``main``: retry < renew < duration).
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
        "--await-gateways",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make a role Ready only when every live gateway replica serves its configHash "
        "(each replica's Lease in the config Secret's namespace says so; reason RollingOut "
        "until then), so kstatus, Flux and Argo CD wait for the data plane; off, Ready "
        "means in the config Secret, for gateways run with --no-presence (default: on)",
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
    _election_arguments(run)
    return top


def _election_arguments(run: argparse.ArgumentParser) -> None:
    """The leader election flags of ``run`` (client-go's meaning of each duration)."""
    election = run.add_argument_group(
        "leader election",
        "Several replicas may run: only the holder of a coordination.k8s.io/v1 Lease writes.",
    )
    election.add_argument(
        "--leader-elect",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="run only while holding the Lease (default: on)",
    )
    election.add_argument(
        "--leader-election-namespace",
        type=_namespace,
        metavar="NS",
        help="the Lease's namespace (default: the pod's; outside a pod: default)",
    )
    election.add_argument(
        "--leader-election-lease-name",
        default=DEFAULT_LEASE_NAME,
        type=_name,
        metavar="NAME",
        help="the Lease's name (default: %(default)s)",
    )
    durations = (
        (
            "--lease-duration",
            DEFAULT_LEASE_DURATION_S,
            "a standby takes over a Lease that "
            "has not changed for this long (the longest failover)",
        ),
        (
            "--renew-deadline",
            DEFAULT_RENEW_DEADLINE_S,
            "the leader stops (exits) when it "
            "could not renew for this long; less than --lease-duration",
        ),
        (
            "--retry-period",
            DEFAULT_RETRY_PERIOD_S,
            "between attempts to acquire or renew; less than --renew-deadline",
        ),
    )
    for flag, default, text in durations:
        election.add_argument(
            flag,
            default=default,
            type=_seconds,
            metavar="SECONDS",
            help=f"{text} (default: %(default)s)",
        )


def _leader_election(args: argparse.Namespace) -> LeaderElection | None:
    """The election the flags ask for; None with --no-leader-elect.

    Raises:
        ValueError: durations out of order (retry < renew < duration).
    """
    if not args.leader_elect:
        return None
    namespace = args.leader_election_namespace or pod_namespace()
    return LeaderElection(
        lease=(namespace, args.leader_election_lease_name),
        identity=new_identity(),
        lease_duration_s=args.lease_duration,
        renew_deadline_s=args.renew_deadline,
        retry_period_s=args.retry_period,
    )


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
        leader_election=_leader_election(args),
        await_gateways=args.await_gateways,
    )
    return operator.run(
        settings, liveness=args.liveness, log_level=args.log_level, log_format=args.log_format
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``) and run the command.

    Returns the exit status; argparse exits with 2 on bad arguments.
    """
    top = parser()
    args = top.parse_args(argv)
    if (
        args.command == "run"
        and args.leader_elect
        and not args.retry_period < args.renew_deadline < args.lease_duration
    ):
        top.error("leader election needs --retry-period < --renew-deadline < --lease-duration")
    if args.command == "crd":
        sys.stdout.write(crd.helm_template() if args.helm else crd.crd_yaml())
        return 0
    return _run(args)
