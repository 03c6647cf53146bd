"""The peers measured beside rolegate: LiteLLM, TensorZero, Portkey's gateway, and nginx.

Owns :class:`Peer` (a peer's name, pinned version, install and start), :data:`PEERS` (all
of them, in the order the results list them), :func:`start_peer` (install when missing,
start, and what the results say of it; a peer that cannot be installed here is *skipped*
with the reason, one that does not start is an *error*; neither ends the run) and the
start of the three this module configures:

- TensorZero: its gateway from the ``tensorzero`` wheel (:mod:`devstack.peers.tensorzero`),
  one process (Rust; tokio's runtime with one worker thread, ``TOKIO_WORKER_THREADS=1``), a
  TOML config with one model ``bench`` whose one provider is ``type = "openai"`` at the upstream
  (``api_key_location = "none"``), observability off (no ClickHouse, nothing stored), usage
  analytics off (``TENSORZERO_DISABLE_PSEUDONYMOUS_USAGE_ANALYTICS=1``: otherwise it looks up
  an analytics host at start). Clients call ``/openai/v1/chat/completions`` with model
  ``tensorzero::model_name::bench``. It writes no log line per request.
- Portkey: ``node start-server.js --port=N --headless`` (:mod:`devstack.peers.portkey`), one
  Node process; every request carries ``x-portkey-provider: openai`` and
  ``x-portkey-custom-host: <upstream>/v1``. It listens on every interface (it has no host
  option); the load generator only sends to 127.0.0.1.
- nginx: the floor (:mod:`devstack.peers.nginx`), ``-p DIR -c nginx.conf -e stderr -g
  'daemon off;'``, :data:`NGINX_WORKERS` worker process (one, as every Python target is one
  event loop) under its master; upstream keepalive, no buffering, no access log.

Every peer gets a minimal environment (PATH, HOME, LANG, ``NO_PROXY`` for loopback, and its
own settings), so nothing of ours (proxy variables, API keys) reaches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from bench.procs import Meter, spawn
from bench.targets import MODEL, UPSTREAM_MODEL, Target, start_litellm
from devstack.apt import AptUnavailable
from devstack.cache import BuildFailed
from devstack.peers import litellm, nginx, portkey, tensorzero
from devstack.process import NotReady, ProcessDied, free_ports

__all__ = [
    "NGINX_WORKERS",
    "PEERS",
    "PEER_NAMES",
    "Peer",
    "start_nginx",
    "start_peer",
    "start_portkey",
    "start_tensorzero",
]

#: nginx's worker_processes: one, like the single-event-loop Python targets (rolegate,
#: LiteLLM with one uvicorn worker) and Node; its master process idles beside it.
NGINX_WORKERS: Final = 1


def _env(**extra: str) -> dict[str, str]:
    """PATH, HOME and LANG of ours, loopback exempt from proxies, and ``extra``."""
    return {
        **{k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        **extra,
    }


def _tensorzero_config(upstream_v1: str) -> str:
    """TensorZero's TOML: model ``bench`` -> provider ``upstream`` (OpenAI-compatible)."""
    return f"""[gateway]
observability.enabled = false

[models.{MODEL}]
routing = ["upstream"]

[models.{MODEL}.providers.upstream]
type = "openai"
model_name = "{UPSTREAM_MODEL}"
api_base = "{upstream_v1}/"
api_key_location = "none"
"""


def start_tensorzero(
    workdir: Path, upstream_v1: str, *, headers: dict[str, str], timeout_s: float = 60
) -> Target:
    """TensorZero's gateway (installed: :func:`devstack.peers.tensorzero.ensure`); ready
    when it printed its URL (its start call returns only once it listens). ``headers``
    (the client's ``Authorization``) are sent as to every target; it checks none.

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its output).
    """
    config = workdir / "tensorzero.toml"
    config.write_text(_tensorzero_config(upstream_v1))
    service = spawn(
        "tensorzero",
        tensorzero.command(config),
        log_path=workdir / "tensorzero.log",
        # one tokio worker thread, as every other target has one worker (its default is
        # one per CPU: on a shared 2-CPU machine that takes the load generator's share)
        env=_env(TENSORZERO_DISABLE_PSEUDONYMOUS_USAGE_ANALYTICS="1", TOKIO_WORKER_THREADS="1"),
        inherit_env=False,
        url_pattern=r"listening on (http://127\.0\.0\.1:\d+/openai/v1)",
        timeout_s=timeout_s,
    )
    return Target(
        "tensorzero",
        f"{service.url}/chat/completions",
        headers,
        service,
        Meter.of(service),
        model=f"tensorzero::model_name::{MODEL}",
    )


def start_portkey(
    workdir: Path, upstream_v1: str, *, headers: dict[str, str], timeout_s: float = 60
) -> Target:
    """Portkey's gateway (installed: :func:`devstack.peers.portkey.ensure`) at a free port;
    ready when ``GET /`` answers 200. ``headers`` (the client's ``Authorization``) are sent
    with Portkey's own, and passed on to the upstream as the OpenAI key.

    Raises:
        devstack.cache.BuildFailed: there is no node.
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its output).
    """
    (port,) = free_ports(1)
    service = spawn(
        "portkey",
        portkey.command(port),
        log_path=workdir / "portkey.log",
        env=_env(NODE_ENV="production"),
        inherit_env=False,
        url=f"http://127.0.0.1:{port}",
        ready_path="/",
        timeout_s=timeout_s,
    )
    own = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_v1}
    return Target(
        "portkey",
        f"{service.url}/v1/chat/completions",
        {**headers, **own},
        service,
        Meter.of(service),
    )


def start_nginx(
    workdir: Path, upstream_v1: str, *, binary: Path, headers: dict[str, str], timeout_s: float = 30
) -> Target:
    """nginx (``binary``: :func:`devstack.peers.nginx.ensure`) proxying everything to the
    upstream, config by :func:`devstack.peers.nginx.render_config` with
    :data:`NGINX_WORKERS`; ready when ``GET /health`` answers 200 through it.

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its stderr: its error log).
    """
    (port,) = free_ports(1)
    home = workdir / "nginx"
    home.mkdir(exist_ok=True)
    conf = home / "nginx.conf"
    upstream = urlsplit(upstream_v1).netloc
    conf.write_text(
        nginx.render_config(port=port, upstream=upstream, workdir=home, workers=NGINX_WORKERS)
    )
    argv = [str(binary), "-p", f"{home}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    service = spawn(
        "nginx",
        argv,
        log_path=workdir / "nginx.log",
        env=_env(),
        inherit_env=False,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        timeout_s=timeout_s,
    )
    return Target(
        "nginx", f"{service.url}/v1/chat/completions", headers, service, Meter.of(service)
    )


@dataclass(frozen=True)
class Peer:
    """One peer: ``install`` builds it when missing (progress on its argument, default
    stderr) and returns what ``start`` needs; ``start(workdir, upstream_v1, headers,
    installed)`` starts it and returns the target and what the results record of it
    (``command``, settings); ``version`` is the pin."""

    name: str
    version: str
    install: Callable[[TextIO | None], Path]
    start: Callable[[Path, str, dict[str, str], Path], tuple[Target, dict[str, Any]]]


def _litellm(
    workdir: Path, v1: str, headers: dict[str, str], _: Path
) -> tuple[Target, dict[str, Any]]:
    target = start_litellm(workdir, v1)
    return target, {"command": "litellm --config FILE --num_workers 1", "workers": 1}


def _tensorzero(
    workdir: Path, v1: str, headers: dict[str, str], _: Path
) -> tuple[Target, dict[str, Any]]:
    target = start_tensorzero(workdir, v1, headers=headers)
    return target, {"command": "python tensorzero_gateway.py tensorzero.toml", "workers": 1}


def _portkey(
    workdir: Path, v1: str, headers: dict[str, str], _: Path
) -> tuple[Target, dict[str, Any]]:
    target = start_portkey(workdir, v1, headers=headers)
    info = {
        "command": "node start-server.js --headless",
        "workers": 1,
        "node": portkey.node_version(),
    }
    return target, info


def _nginx(
    workdir: Path, v1: str, headers: dict[str, str], binary: Path
) -> tuple[Target, dict[str, Any]]:
    target = start_nginx(workdir, v1, binary=binary, headers=headers)
    info = {
        "command": "nginx -p DIR -c nginx.conf -e stderr -g 'daemon off;'",
        "binary": str(binary),
        "version": nginx.version(binary),
        "workers": NGINX_WORKERS,
    }
    return target, info


#: Every peer, in the order the results list them.
PEERS: Final = (
    Peer("litellm", litellm.LITELLM_VERSION, litellm.ensure, _litellm),
    Peer("tensorzero", tensorzero.TENSORZERO_VERSION, tensorzero.ensure, _tensorzero),
    Peer("portkey", portkey.PORTKEY_VERSION, portkey.ensure, _portkey),
    Peer("nginx", nginx.NGINX_VERSION, nginx.ensure, _nginx),
)
PEER_NAMES: Final = tuple(peer.name for peer in PEERS)


def start_peer(
    peer: Peer, workdir: Path, upstream_v1: str, headers: dict[str, str]
) -> tuple[Target | None, dict[str, Any]]:
    """Install ``peer`` when missing (progress on stderr), then start it: the target and
    its record (``url``, ``version``, ``command``, ``workers``, ...), or None and a record
    that says why not: ``skipped`` (it cannot be installed on this machine: no package
    manager, no network to its registry, a missing library; the reason) or ``error`` (it
    was installed but did not start; its output). The caller stops a started target."""
    record: dict[str, Any] = {"version": peer.version}
    try:
        installed = peer.install(None)
    except (BuildFailed, AptUnavailable, OSError) as exc:
        return None, {**record, "skipped": f"not installable here: {str(exc)[-2000:]}"}
    try:
        target, info = peer.start(workdir, upstream_v1, headers, installed)
    except (BuildFailed, ProcessDied, NotReady, OSError) as exc:
        return None, {**record, "error": str(exc)[-2000:]}
    url = target.url.removesuffix("/chat/completions")
    return target, {**record, "url": url, **info}
