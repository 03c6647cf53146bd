"""TensorZero's gateway in a process of its own: run with the TensorZero virtualenv's python.

``python -P tensorzero_gateway.py CONFIG.toml`` starts the HTTP gateway that the
``tensorzero`` wheel ships (Rust, in the extension module), prints
``listening on http://127.0.0.1:PORT/openai/v1`` (its OpenAI-compatible base URL) once it
serves, and runs until it is signalled (SIGTERM/SIGINT end the process, and the gateway's
threads with it). It imports nothing of rolegate.

The entry point is the package's internal ``_start_http_gateway`` (the one its own
``patch_openai_client`` uses; tensorzero 2026.6.0, ``tensorzero/__init__.py``): keyword-only
``config_file``, ``clickhouse_url``, ``postgres_url``, ``valkey_url``, ``async_setup``; with
``async_setup=False`` it blocks until the gateway listens on 127.0.0.1 at a free port and
returns a ``LocalHttpGateway`` whose ``base_url`` is that URL plus ``/openai/v1``. The
gateway stops when that object is closed or collected, so it is kept referenced here. Being
internal, it is only used with the pinned version (:mod:`devstack.peers.tensorzero`).
"""

from __future__ import annotations

import signal
import sys
import threading

from tensorzero import _start_http_gateway

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Serve the config file ``argv[0]`` until SIGTERM or SIGINT; exit status 0, 2 on bad
    arguments."""
    if len(argv) != 1:
        print("usage: tensorzero_gateway.py CONFIG.toml", file=sys.stderr)
        return 2
    gateway = _start_http_gateway(
        config_file=argv[0],
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"listening on {gateway.base_url}", flush=True)
    while not stop.wait(3600):
        pass
    gateway.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
