"""Logging setup of the gateway: text or JSON lines on stderr.

JSON records carry the structured extras the gateway logs with (role, binding, upstream,
config_hash, source, kind). Nothing logged by the gateway holds a header, a prompt, a
completion or a credential.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["quiet_client_bodies", "setup_logging"]


def quiet_client_bodies() -> None:
    """Keep the Kubernetes client's debug log off: it logs every response body, and the
    body of a Secret holds credentials (the config Secret: every role's key)."""
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)


def setup_logging(*, level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger. ``fmt``: ``text`` or ``json``; ``level``: a level name.

    Raises:
        ValueError: an unknown level or format.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    elif fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_client_bodies()
