"""``rolegate-gateway``: run the gateway.

In Kubernetes: ``rolegate-gateway --config-secret NAMESPACE/NAME`` serves the config the
operator writes to that Secret and reloads it on change, and balances each ``serve:`` role
over its backend's ready pods (their EndpointSlices). Standalone:
``rolegate-gateway --manifests PATH`` serves the LLMRole and Secret manifests under PATH and
reloads them on change, no Kubernetes needed.

Client access (``--auth``): ``none`` (the default: every client may call every role; a
warning says so when listening beyond loopback), ``kubernetes`` (a client's bearer token is
a Kubernetes identity or an API key, and RBAC verb ``use`` on the role's LLMRole decides:
``rolegate_gateway.auth.access``) or ``keys`` (API keys only, allowed the roles their
Secret's ``rolegate.dev/roles`` annotation names).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rolegate_gateway.app import create_app, start
from rolegate_gateway.auth.access import MODES, Access
from rolegate_gateway.backends import Backends
from rolegate_gateway.health import HealthChecker
from rolegate_gateway.keys import ConfigSource
from rolegate_gateway.logs import setup_logging
from rolegate_gateway.manifests import ManifestsSource
from rolegate_gateway.presence import Presence
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.server import raise_nofile_limit
from rolegate_gateway.settings import MIB, ServerSettings
from rolegate_gateway.slots import SlotStore, redact

__all__ = ["main", "parser"]

log = logging.getLogger("rolegate_gateway")


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="rolegate-gateway",
        description="OpenAI-compatible gateway that serves LLM roles.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config-secret",
        type=_secret_ref,
        metavar="NAMESPACE/NAME",
        help="serve the config the operator writes to this Secret, watched through the "
        "Kubernetes API (in a pod: its ServiceAccount; else --kubeconfig or $KUBECONFIG)",
    )
    source.add_argument(
        "--manifests",
        type=Path,
        metavar="PATH",
        help="a file or directory of YAML with LLMRole and Secret manifests (reloaded on change)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="kubeconfig for --config-secret outside a pod (default: $KUBECONFIG, ~/.kube/config)",
    )
    p.add_argument(
        "--env-secrets",
        action="store_true",
        help="let environment variables supply Secret keys: Secret openai-creds, key apiKey "
        "-> OPENAI_CREDS_API_KEY (wins over the manifest's value)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    p.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the manifests are checked for changes (1.0)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="how long running requests may finish at shutdown (25; keep it below the "
        "pod's terminationGracePeriodSeconds)",
    )
    p.add_argument(
        "--drain-grace",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="after a rebind or removal, calls in flight on the old binding may run "
        "2 x timeoutSeconds + this long before they are cut off with 503 (15)",
    )
    access = p.add_argument_group("client access")
    access.add_argument(
        "--auth",
        choices=MODES,
        default="none",
        help="who may call which role: none (anyone: every role is open), kubernetes (a "
        "ServiceAccount token or an API key, authorised by RBAC verb 'use' on the role's "
        "LLMRole; through --kubeconfig or the pod's ServiceAccount), keys (API keys and "
        "their rolegate.dev/roles annotation only) (none)",
    )
    access.add_argument(
        "--token-audience",
        default="rolegate",
        metavar="AUDIENCE",
        help="the audience a client's Kubernetes token must be for (rolegate)",
    )
    access.add_argument(
        "--auth-token-ttl",
        type=_positive(float),
        default=60.0,
        metavar="SECONDS",
        help="how long a TokenReview's answer is reused, at most until the token expires (60)",
    )
    access.add_argument(
        "--auth-allowed-ttl",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="how long an allowing SubjectAccessReview is reused (30)",
    )
    access.add_argument(
        "--auth-denied-ttl",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="how long a denial (or a refused token) is reused (5)",
    )
    access.add_argument(
        "--metrics-client-label",
        action="store_true",
        help="count requests and tokens per client identity too (rolegate_client_*_total; "
        "one series per client and role)",
    )
    limits = p.add_argument_group("client limits")
    d = ServerSettings()
    limits.add_argument(
        "--max-connections",
        type=_positive(int),
        default=d.max_connections,
        metavar="N",
        help=f"open client connections; one more is answered 503 ({d.max_connections}; "
        "lowered to fit the open-files limit, whose soft value is raised to the hard one)",
    )
    limits.add_argument(
        "--keepalive-timeout",
        type=_positive(float),
        default=d.keepalive_timeout_s,
        metavar="SECONDS",
        help=f"close a connection idle this long ({d.keepalive_timeout_s:g})",
    )
    limits.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=d.header_timeout_s,
        metavar="SECONDS",
        help="close a connection whose request headers take longer than this from their "
        f"first byte ({d.header_timeout_s:g})",
    )
    limits.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=d.body_timeout_s,
        metavar="SECONDS",
        help=f"answer 408 when a body takes longer than this plus 1 s per "
        f"{d.body_min_rate // MIB} MiB it declares ({d.body_timeout_s:g})",
    )
    limits.add_argument(
        "--max-body-mib",
        type=_positive(int),
        default=d.max_body_bytes // MIB,
        metavar="MIB",
        help=f"largest request body; larger is 413 ({d.max_body_bytes // MIB})",
    )
    limits.add_argument(
        "--max-pending-body-mib",
        type=_positive(int),
        default=d.max_pending_body_bytes // MIB,
        metavar="MIB",
        help="request bodies held at once, gateway-wide; beyond it new requests are "
        f"answered 429 ({d.max_pending_body_bytes // MIB})",
    )
    slots = p.add_argument_group("one maxAsync across replicas")
    slots.add_argument(
        "--concurrency-store",
        type=_store_url,
        default=os.environ.get("ROLEGATE_CONCURRENCY_STORE") or None,
        metavar="URL",
        help="redis://, rediss:// or unix:// URL of a Redis-protocol store (Redis, Valkey) "
        "shared by every gateway replica: each role's maxAsync then holds across them "
        "(default: $ROLEGATE_CONCURRENCY_STORE, so a password can come from a Secret). "
        "Without it each replica enforces maxAsync alone (N replicas: up to N x maxAsync)",
    )
    slots.add_argument(
        "--concurrency-slot-ttl",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="a slot's lease lives this long without renewal (renewed every third of it): "
        "the slots of a replica that died come back within it (10)",
    )
    slots.add_argument(
        "--fallback-replicas",
        type=_count,
        default=1,
        metavar="N",
        help="while the store is unreachable each replica admits maxAsync // N calls per "
        "role (at least 1) when live replicas are not known from their Leases (no "
        "presence, or before its first list); set it to the replica count (1)",
    )
    presence = p.add_argument_group("presence (--config-secret only)")
    presence.add_argument(
        "--presence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep a Lease of this replica's own in the config Secret's namespace saying which "
        "config it serves (the operator's status.gateways; live replicas for the "
        "concurrency fallback); identity $POD_NAME, else HOSTNAME-PID (on with --config-secret)",
    )
    presence.add_argument(
        "--presence-lease-duration",
        type=_count,
        default=10,
        metavar="SECONDS",
        help="whole seconds the Lease counts as live after each renewal (10)",
    )
    presence.add_argument(
        "--presence-renew",
        type=_positive(float),
        default=3.0,
        metavar="SECONDS",
        help="how often the Lease is renewed, below its duration; also at once after each "
        "config applied (3)",
    )
    health = p.add_argument_group("upstream health")
    health.add_argument(
        "--upstream-check-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between checks that each role's upstream serves its model (GET "
        "/models, one per distinct upstream and credentials; jittered ±20%%), and at once "
        "after each config applied; 0: no checks (30)",
    )
    health.add_argument(
        "--upstream-check-timeout",
        type=_positive(float),
        default=5.0,
        metavar="SECONDS",
        help="seconds one upstream check may take (5)",
    )
    health.add_argument(
        "--upstream-check-concurrency",
        type=_count,
        default=8,
        metavar="N",
        help="upstream checks in flight at most (8)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (info)",
    )
    p.add_argument("--log-format", default="text", choices=["text", "json"], help="(text)")
    return p


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive finite number")
        return value

    return parse


def _settings(args: argparse.Namespace) -> ServerSettings:
    """The client limits from the flags; the connection cap fits the open-files limit."""
    nofile = raise_nofile_limit()
    cap = min(args.max_connections, max(16, nofile - 128))
    if cap < args.max_connections:
        log.warning(
            "--max-connections %d lowered to %d: the open-files limit is %d",
            args.max_connections,
            cap,
            nofile,
        )
    return ServerSettings(
        max_connections=cap,
        keepalive_timeout_s=args.keepalive_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_body_bytes=args.max_body_mib * MIB,
        max_pending_body_bytes=args.max_pending_body_mib * MIB,
    )


def _count(text: str) -> int:
    """A whole number >= 1 (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _store_url(text: str) -> str:
    if text.partition("://")[0] not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(
            f"{redact(text)!r} is not a redis://, rediss:// or unix:// URL"
        )
    return text


def _secret_ref(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def _source(args: argparse.Namespace, runtime: Runtime) -> ConfigSource:
    if args.config_secret is not None:
        # The Kubernetes client costs ~35 MB and 0.2 s to import: only when it is used.
        from rolegate_gateway.kube import ConfigSecretSource

        namespace, name = args.config_secret
        return ConfigSecretSource(namespace, name, runtime, kubeconfig=args.kubeconfig)
    return ManifestsSource(
        args.manifests, runtime, interval_s=args.reload_interval, env_secrets=args.env_secrets
    )


def _access(args: argparse.Namespace, runtime: Runtime) -> Access:
    """Client access as the flags say; warns when every role is open beyond loopback."""
    reviewer = None
    if args.auth == "kubernetes":
        # The Kubernetes client costs ~35 MB and 0.2 s to import: only when it is used.
        from rolegate_gateway.auth.reviews import KubeReviews

        reviewer = KubeReviews(args.kubeconfig, audience=args.token_audience)
    elif args.auth == "none" and not _loopback(args.host):
        log.warning(
            "--auth none: every role is open to anyone who reaches %s:%d; use --auth "
            "kubernetes (RBAC) or --auth keys in a shared network",
            args.host,
            args.port,
        )
    if args.metrics_client_label:
        runtime.metrics.count_clients()
    return Access(
        args.auth,
        reviewer=reviewer,
        token_ttl_s=args.auth_token_ttl,
        allowed_ttl_s=args.auth_allowed_ttl,
        denied_ttl_s=args.auth_denied_ttl,
        count=runtime.metrics.auth_result,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


def _slots(args: argparse.Namespace, live_replicas: Callable[[], int]) -> SlotStore | None:
    """The concurrency store of ``--concurrency-store`` (None without it)."""
    if args.concurrency_store is None:
        return None
    return SlotStore(
        args.concurrency_store, ttl_s=args.concurrency_slot_ttl, live_replicas=live_replicas
    )


def _presence(args: argparse.Namespace) -> Presence | None:
    """This replica's gateway Lease: with --config-secret, unless --no-presence."""
    if args.config_secret is None or args.presence is False:
        return None
    namespace, name = args.config_secret
    return Presence(
        namespace,
        name,
        kubeconfig=args.kubeconfig,
        lease_duration_s=args.presence_lease_duration,
        renew_s=args.presence_renew,
        assumed_replicas=args.fallback_replicas,
    )


def _presence_problem(args: argparse.Namespace) -> str | None:
    """Why the presence flags cannot work, or None."""
    if args.presence and args.config_secret is None:
        return "--presence needs --config-secret"
    if args.presence_lease_duration < 1 or args.presence_renew >= args.presence_lease_duration:
        return "--presence-renew must be below --presence-lease-duration (at least 1)"
    return None


def _health(args: argparse.Namespace, runtime: Runtime) -> HealthChecker | None:
    """The upstream checker, unless --upstream-check-interval is 0."""
    if args.upstream_check_interval <= 0:
        return None
    return HealthChecker(
        runtime,
        interval_s=args.upstream_check_interval,
        timeout_s=args.upstream_check_timeout,
        concurrency=args.upstream_check_concurrency,
    )


async def _serve(args: argparse.Namespace) -> None:
    presence = _presence(args)
    live = presence.live_replicas if presence else lambda: args.fallback_replicas
    runtime = Runtime(drain_grace_s=args.drain_grace, slots=_slots(args, live_replicas=live))
    source = _source(args, runtime)
    # Backends' pods are watched only when the config comes from Kubernetes; standalone,
    # a serve: role's calls go to its host.
    backends = Backends(watch=args.config_secret is not None, kubeconfig=args.kubeconfig)
    app = create_app(
        runtime,
        source=source,
        settings=_settings(args),
        backends=backends,
        access=_access(args, runtime),
        presence=presence,
        health=_health(args, runtime),
    )
    runner, port = await start(
        app, host=args.host, port=args.port, shutdown_timeout_s=args.shutdown_timeout
    )
    log.info(
        "serving %d roles on http://%s:%d/v1 (config %s, auth %s)",
        len(runtime.roles),
        args.host,
        port,
        runtime.config_hash,
        args.auth,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: finishing running requests (up to %g s)", args.shutdown_timeout)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = parser()
    args = p.parse_args(argv)
    problem = _presence_problem(args)
    if problem is not None:
        p.error(problem)
    setup_logging(level=args.log_level, fmt=args.log_format)
    if args.manifests is not None and not args.manifests.exists():
        log.error("--manifests %s: no such file or directory", args.manifests)
        return 2
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
