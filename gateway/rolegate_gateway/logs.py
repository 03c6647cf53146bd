"""Logging setup of the gateway: text or JSON lines on stderr.

JSON records carry the structured extras the gateway logs with (role, binding, upstream,
config_hash, source, kind). Nothing logged by the gateway holds a header, a prompt, a
completion or a credential.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from pythonjsonlogger.json import JsonFormatter

__all__ = ["Throttled", "quiet_client_bodies", "setup_logging"]


def quiet_client_bodies() -> None:
    """Keep the debug logs of clients that log credentials off: the Kubernetes client logs
    every response body, and the body of a Secret holds credentials (the config Secret:
    every role's key); botocore logs the canonical request it signs (with the session
    token) and STS's answer (with the secret key)."""
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
    logging.getLogger("botocore").setLevel(logging.INFO)


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


class Throttled:
    """At most one log line per kind of event per ``interval_s`` seconds.

    For floods a client can cause (bad requests, slow or surplus connections): the next
    line of a kind says how many were left out since the last one.
    """

    __slots__ = ("_interval_s", "_logger", "_state")

    #: Kinds remembered at most; beyond, those outside their interval are forgotten.
    MAX_KINDS = 1024

    def __init__(self, logger: logging.Logger, *, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log ``message % args`` at WARNING unless ``kind`` was logged in the interval;
        ``exc_info``: with the traceback of the exception being handled (a bug of ours)."""
        now = time.monotonic()
        if len(self._state) >= self.MAX_KINDS:  # kinds named after clients: keep it bounded
            quiet = {k: v for k, v in self._state.items() if now - v[0] < self._interval_s}
            self._state = quiet if len(quiet) < self.MAX_KINDS else {}
        last, skipped = self._state.get(kind, (-math.inf, 0))
        if now - last < self._interval_s:
            self._state[kind] = (last, skipped + 1)
            return
        self._state[kind] = (now, 0)
        if skipped:
            message += f" ({skipped} more in the last {now - last:.0f} s)"
        self._logger.warning(message, *args, exc_info=exc_info, extra={"kind": kind})
