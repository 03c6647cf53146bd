"""The gateway's errors, and the one place client-library errors are mapped to them.

Errors a client sees carry an HTTP status and an OpenAI error ``type``; they render as
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes)::

    GatewayError
    ├── InvalidRequest            400 invalid_request_error
    ├── RoleNotFound              404 invalid_request_error, code model_not_found
    ├── QueueFull                 429 rate_limit_exceeded (queue full or wait exceeded)
    ├── Draining                  503 service_unavailable (cut off by a drain deadline)
    └── UpstreamError
        ├── UpstreamTimeout       504 timeout
        ├── UpstreamUnavailable   502 upstream_unavailable (connect or protocol failure)
        └── UpstreamStatusError   the upstream's own status, its body passed on

    ConfigError                   a config that fails validation; never reaches a client
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence

import aiohttp
from pydantic import ValidationError

__all__ = [
    "ConfigError",
    "Draining",
    "GatewayError",
    "InvalidRequest",
    "QueueFull",
    "RoleNotFound",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "describe_validation",
    "error_body",
    "map_client_errors",
]


def error_body(
    message: str, *, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """OpenAI's error body as JSON bytes."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


class GatewayError(Exception):
    """Base of the errors a client sees; ``status`` is the HTTP status of the answer."""

    status: int = 500
    type_: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}

    def body(self) -> bytes:
        """OpenAI's error body for this error."""
        return error_body(self.message, type_=self.type_, code=self.code, param=self.param)


class InvalidRequest(GatewayError):
    """The request is malformed: not JSON, no ``model``, a bad header."""

    status = 400
    type_ = "invalid_request_error"


class RoleNotFound(GatewayError):
    """The request names a role the gateway does not serve; the message lists those it does."""

    status = 404
    type_ = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, role: str, known: Sequence[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"The role {role!r} does not exist. Known roles: {listed}.", param="model")


class QueueFull(GatewayError):
    """The role's queue is full, or the request waited longer than ``queue.maxWaitSeconds``."""

    status = 429
    type_ = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Draining(GatewayError):
    """An in-flight call on a replaced or removed role ran past its drain deadline."""

    status = 503
    type_ = "service_unavailable"
    code = "role_drained"


class UpstreamError(GatewayError):
    """The upstream call failed."""

    status = 502
    type_ = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the role's ``timeoutSeconds``."""

    status = 504
    type_ = "timeout"
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, or broke the connection."""

    status = 502
    type_ = "upstream_unavailable"
    code = "upstream_unavailable"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; its body (scrubbed) is passed on."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self._body = body
        self.content_type = content_type

    def body(self) -> bytes:
        return self._body


class ConfigError(ValueError):
    """A configuration that fails validation; the gateway keeps serving its previous one."""


@contextlib.contextmanager
def map_client_errors(upstream: str) -> Iterator[None]:
    """Map aiohttp client errors raised inside the block to the gateway's own errors.

    Timeouts are not mapped here: the proxy bounds each call with ``asyncio.timeout``.

    Raises:
        UpstreamUnavailable: connect errors, a broken or malformed answer.
    """
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(f"upstream {upstream} is unreachable: {exc.os_error}") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise UpstreamUnavailable(f"upstream {upstream} failed: {type(exc).__name__}") from exc


def describe_validation(exc: ValidationError, what: str) -> str:
    """A readable one-line summary of a pydantic error, without the offending input values.

    Input values are left out on purpose: they may hold credentials.
    """
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{what}: " + "; ".join(parts)
