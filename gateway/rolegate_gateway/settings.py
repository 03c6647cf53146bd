"""The gateway's own limits on clients: connections, timeouts, request bodies.

Owns :class:`ServerSettings`. Each limit has a default that a user of an LLM gateway
expects (in the spirit of nginx's ``client_header_timeout``, ``keepalive_timeout`` and
``client_max_body_size``) and a ``rolegate-gateway`` flag that changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIB", "ServerSettings"]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Limits the gateway puts on its clients.

    A client past a limit gets OpenAI's error body with a 4xx (or, for a connection over
    ``max_connections``, a 503 and a close); nothing is logged per event, at most one line
    per ``error_log_interval_s``.
    """

    #: Open client connections; one more is answered 503 and closed at once. The soft
    #: RLIMIT_NOFILE is raised to the hard limit at start, and the cap is lowered to fit it.
    max_connections: int = 4096
    #: Seconds a connection may sit idle between requests (and before its first byte).
    #: aiohttp's default is 3,630 s; SDK clients drop idle connections after 5-60 s.
    keepalive_timeout_s: float = 30.0
    #: Seconds from a request's first byte until its headers are complete (slowloris).
    header_timeout_s: float = 10.0
    #: Seconds to receive a body, plus one second per ``body_min_rate`` bytes it declares:
    #: a 64 MiB body at the default rate may take 10 + 64 s. Past it: 408.
    body_timeout_s: float = 10.0
    #: Slowest accepted upload, bytes per second (see ``body_timeout_s``).
    body_min_rate: int = MIB
    #: Largest request body, bytes; larger is 413 (at once when Content-Length says so).
    #: Images travel base64-encoded inside chat requests, hence the generous size.
    max_body_bytes: int = 64 * MIB
    #: Bytes of request bodies the gateway holds at once (being read, parsed, queued or
    #: sent); a request that does not fit is answered 429 with Retry-After.
    max_pending_body_bytes: int = 512 * MIB
    #: Bodies larger than this are parsed in a worker process, off the event loop, so a
    #: large body does not stall other requests. Smaller ones are parsed on the loop: at
    #: most ~30 ms for the worst 256 KiB body (all escaped emoji), ~0.03 ms for a chat
    #: request of a few KiB.
    offload_body_bytes: int = 256 * 1024
    #: Worker processes parsing large bodies, so at most this many are parsed at once.
    offload_workers: int = 2
    #: Upper bound on the values in one JSON body, counted as commas and opening brackets
    #: (so also those inside strings): it bounds the memory a parse can take. OpenAI's
    #: largest bodies (2,048 embedding inputs of tokens, 300k tokens at most) stay far below.
    max_json_values: int = 1_000_000
    #: Seconds between two log lines about the same kind of client misbehaviour.
    error_log_interval_s: float = 10.0
