"""What the load generator is pointed at: the upstream itself, rolegate, LiteLLM's proxy
(the other peers: :mod:`bench.peers`).

Owns :class:`Target` and the starting of each real process with its configuration:

- the upstream: ``python -m bench.upstream`` (:mod:`bench.upstream`);
- rolegate: the ``rolegate-gateway`` CLI of this virtualenv with ``--manifests FILE``, one
  LLMRole ``bench`` (binding vllm, maxAsync high enough never to queue);
- LiteLLM: its proxy CLI from :func:`devstack.peers.litellm.ensure`, one uvicorn worker, one
  model ``bench`` (``openai/bench-model`` at the upstream), offline
  (``LITELLM_LOCAL_MODEL_COST_MAP=True``), a random ``sk-`` master key, empty
  ``callbacks``/``success_callback``/``failure_callback``, ``LITELLM_LOG=ERROR`` and
  uvicorn's access log off (rolegate writes none either); a minimal environment (PATH,
  HOME, LANG and those settings; ``NO_PROXY`` for loopback), so nothing of ours (proxy
  variables, API keys, callback settings) reaches it.

Every client asks for model ``bench`` (TensorZero's names it its own way: ``Target.model``);
the proxies send ``bench-model`` upstream.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Meter, spawn
from bench.upstream import UpstreamSettings
from devstack.peers import litellm
from devstack.process import Process, free_ports

__all__ = [
    "MODEL",
    "Target",
    "gateway_cli",
    "role",
    "stage_roles",
    "start_litellm",
    "start_rolegate",
    "start_upstream",
    "write_roles",
]

#: The model name every client sends (the role, for rolegate).
MODEL = "bench"
#: What the proxies send upstream in its place.
UPSTREAM_MODEL = "bench-model"
#: maxAsync of benchmark roles: above any concurrency measured, so nothing queues.
MAX_ASYNC = 4096


@dataclass
class Target:
    """One thing measured: ``url`` is its chat completions endpoint; ``model`` what its
    clients send as ``model`` (:data:`MODEL` unless its API names models otherwise);
    ``service`` and ``meter`` are the proxy process (None for the direct call)."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    service: Process | None = None
    meter: Meter | None = None
    model: str = MODEL


def start_upstream(workdir: Path, settings: UpstreamSettings) -> Process:
    """The upstream process; its ``url`` is ``http://127.0.0.1:PORT`` (API under /v1).

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its output).
    """
    argv = [
        sys.executable,
        "-m",
        "bench.upstream",
        f"--delay-s={settings.delay_s}",
        f"--chunks={settings.chunks}",
        f"--chunk-interval-s={settings.chunk_interval_s}",
    ]
    return spawn(
        "upstream",
        argv,
        log_path=workdir / "upstream.log",
        url_pattern=r"listening on (http://127\.0\.0\.1:\d+)",
        ready_path="/health",
        timeout_s=30,
    )


def role(name: str, host: str, *, model: str = UPSTREAM_MODEL) -> dict[str, Any]:
    """An LLMRole manifest for a benchmark role at ``host`` (the upstream's /v1 URL)."""
    return {
        "apiVersion": "rolegate.dev/v1alpha1",
        "kind": "LLMRole",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "binding": "vllm",
            "model": model,
            "host": host,
            "maxAsync": MAX_ASYNC,
            "timeoutSeconds": 60,
            "queue": {"maxSize": 10000, "maxWaitSeconds": 60},
        },
    }


def stage_roles(path: Path, docs: Sequence[dict[str, Any]]) -> Path:
    """Write manifests as one multi-document YAML file beside ``path``; renaming the file
    returned onto ``path`` publishes it atomically, so a polling gateway never reads half
    a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return tmp


def write_roles(path: Path, docs: Sequence[dict[str, Any]]) -> Path:
    """Write manifests to ``path`` atomically (see :func:`stage_roles`)."""
    stage_roles(path, docs).replace(path)
    return path


def gateway_cli() -> Path:
    """The ``rolegate-gateway`` console script of the running virtualenv.

    Raises:
        FileNotFoundError: rolegate is not installed in this interpreter's environment.
    """
    cli = Path(sys.executable).with_name("rolegate-gateway")
    if not cli.is_file():
        raise FileNotFoundError(f"{cli}: install rolegate first (make venv)")
    return cli


def start_rolegate(
    manifests: Path,
    *,
    log_path: Path,
    reload_interval_s: float = 1.0,
    timeout_s: float = 60,
    src: Path | None = None,
    extra: Sequence[str] = (),
) -> Process:
    """``rolegate-gateway --manifests FILE --host 127.0.0.1 --port 0`` (and ``extra``
    flags); ready when /readyz answers 200. With ``src`` (another rolegate checkout, e.g.
    a ``git worktree`` of an older commit): that checkout's gateway,
    ``python -m rolegate_gateway`` with ``PYTHONPATH=src/gateway``, in this virtualenv.

    Raises:
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its log).
    """
    command = [sys.executable, "-m", "rolegate_gateway"] if src else [str(gateway_cli())]
    argv = [
        *command,
        "--manifests",
        str(manifests),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--reload-interval",
        str(reload_interval_s),
        *extra,
    ]
    return spawn(
        "rolegate",
        argv,
        log_path=log_path,
        env={"PYTHONPATH": str(src / "gateway")} if src else None,
        url_pattern=r"on (http://127\.0\.0\.1:\d+)/v1",
        ready_path="/readyz",
        timeout_s=timeout_s,
    )


def _litellm_files(workdir: Path, upstream_v1: str, master_key: str) -> tuple[Path, Path]:
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": upstream_v1,
                    "api_key": "unused",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
    }
    log_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
    config_path = workdir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_config_path = workdir / "litellm-logging.json"
    log_config_path.write_text(json.dumps(log_config))
    return config_path, log_config_path


def start_litellm(workdir: Path, upstream_v1: str, *, timeout_s: float = 120) -> Target:
    """LiteLLM's proxy, built by :func:`devstack.peers.litellm.ensure` when missing; ready when
    /health/liveliness answers 200.

    Raises:
        devstack.cache.BuildFailed: its virtualenv could not be built.
        devstack.process.ProcessDied, devstack.process.NotReady: it did not start (the
            message holds its output).
    """
    cli = litellm.ensure()
    master_key = "sk-" + secrets.token_urlsafe(32)
    config_path, log_config_path = _litellm_files(workdir, upstream_v1, master_key)
    (port,) = free_ports(1)
    argv = [
        str(cli),
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        "--telemetry",
        "False",
        "--log_config",
        str(log_config_path),
    ]
    env = {
        **{k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    service = spawn(
        "litellm",
        argv,
        log_path=workdir / "litellm.log",
        env=env,
        inherit_env=False,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health/liveliness",
        timeout_s=timeout_s,
    )
    return Target(
        "litellm",
        f"{service.url}/v1/chat/completions",
        {"Authorization": f"Bearer {master_key}"},
        service,
        Meter.of(service),
    )
