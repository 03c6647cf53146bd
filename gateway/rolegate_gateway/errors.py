"""The gateway's errors, and the one place client-library errors are mapped to them.

Errors a client sees carry an HTTP status and an OpenAI error ``type``; they render as
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes)::

    GatewayError
    ├── InvalidRequest            400 invalid_request_error
    │   ├── RequestTimeout        408 code request_timeout (the body did not arrive in time)
    │   └── RequestTooLarge       413 code request_too_large
    ├── Unauthenticated           401 invalid_request_error, code invalid_api_key (no token,
    │                                 or one that is neither a valid Kubernetes token nor a key)
    ├── PermissionDenied          403 invalid_request_error, code permission_denied (RBAC)
    ├── AuthUnavailable           503 service_unavailable, code auth_unavailable (no review
    │                                 could be had: fail closed)
    ├── RoleNotFound              404 invalid_request_error, code model_not_found
    │   └── RoleNotServed         404 the same, for a role whose binding this gateway lacks
    ├── QueueFull                 429 rate_limit_exceeded (queue full or wait exceeded)
    ├── Draining                  503 service_unavailable (cut off by a drain deadline)
    ├── InternalError             500 server_error (a bug in the gateway)
    └── UpstreamError
        ├── UpstreamTimeout       504 timeout
        ├── UpstreamUnavailable   502 upstream_unavailable (connect or protocol failure,
        │   │                         a redirect, an answer over the size cap)
        │   └── BackendNotReady   503 service_unavailable, code backend_not_ready (the
        │                             role's backend lists no ready pod)
        └── UpstreamStatusError   the upstream's own status, its body passed on

Messages name the role and what failed, never the upstream's URL or address (those are
for the operator's log).

    ConfigError                   a config that fails validation; never reaches a client
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence

import aiohttp
from pydantic import ValidationError

__all__ = [
    "AuthUnavailable",
    "BackendNotReady",
    "ConfigError",
    "Draining",
    "GatewayError",
    "InternalError",
    "InvalidRequest",
    "PermissionDenied",
    "QueueFull",
    "RequestTimeout",
    "RequestTooLarge",
    "RoleNotFound",
    "RoleNotServed",
    "Unauthenticated",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "describe_validation",
    "error_body",
    "map_client_errors",
    "os_reason",
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


class RequestTimeout(InvalidRequest):
    """The request body did not arrive within the body timeout."""

    status = 408
    code = "request_timeout"


class RequestTooLarge(InvalidRequest):
    """The request body is larger than the gateway accepts."""

    status = 413
    code = "request_too_large"


class Unauthenticated(GatewayError):
    """The client sent no bearer token, or one the gateway does not accept (OpenAI's own
    answer to a bad key: 401 ``invalid_api_key``)."""

    status = 401
    type_ = "invalid_request_error"
    code = "invalid_api_key"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="rolegate"'}


class PermissionDenied(GatewayError):
    """The client's identity may not call the role (RBAC verb ``use`` on its LLMRole, or
    an API key's ``rolegate.dev/roles``); the message names both, never the token."""

    status = 403
    type_ = "invalid_request_error"
    code = "permission_denied"


class _RetryAfter(GatewayError):
    """An error the client may retry after ``retry_after_s`` seconds (``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class AuthUnavailable(_RetryAfter):
    """The client's access could not be checked (the Kubernetes API is unreachable) and no
    unexpired decision is held: refused, never let through."""

    status = 503
    type_ = "service_unavailable"
    code = "auth_unavailable"


class RoleNotFound(GatewayError):
    """The request names a role the gateway does not serve; the message lists those it does."""

    status = 404
    type_ = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, role: str, known: Sequence[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"The role {role!r} does not exist. Known roles: {listed}.", param="model")


class RoleNotServed(RoleNotFound):
    """The config has the role, but this gateway cannot serve its binding (the config came
    from a newer operator); ``reason`` says what to do."""

    def __init__(self, role: str, reason: str) -> None:
        GatewayError.__init__(self, f"The role {role!r} is not served: {reason}.", param="model")


class QueueFull(_RetryAfter):
    """The role's queue is full, or the request waited longer than ``queue.maxWaitSeconds``."""

    status = 429
    type_ = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class Draining(GatewayError):
    """An in-flight call on a replaced or removed role ran past its drain deadline."""

    status = 503
    type_ = "service_unavailable"
    code = "role_drained"


class InternalError(GatewayError):
    """A bug in the gateway: an exception nothing else mapped."""

    status = 500
    type_ = "server_error"

    def __init__(self, message: str = "internal gateway error") -> None:
        super().__init__(message)


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


class BackendNotReady(UpstreamUnavailable):
    """The role's backend (a model server the operator runs) has no ready pod in its
    EndpointSlices: still loading its model, crashing, or scaled to zero. Nothing was
    sent; the client may retry later."""

    status = 503
    type_ = "service_unavailable"
    code = "backend_not_ready"


#: Upstream error statuses the client's request caused: passed on, but counted as the
#: client's (not in ``rolegate_upstream_errors_total``). 400 (bad parameters), 413 (too
#: large), 415 and 422 (unprocessable input) depend on what the client sent. Every other
#: status is the upstream's or the role's: 401 and 403 (the role's key), 404 (the gateway
#: builds the URL and the model from the role, so a missing one is a wrong role), 408, 429
#: (the role's quota) and 5xx.
CLIENT_STATUSES = frozenset({400, 413, 415, 422})


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; its body (scrubbed) is passed on as
    JSON, with its rate-limit headers (``headers``)."""

    def __init__(
        self, status: int, body: bytes, *, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self._body = body
        self._headers = dict(headers or {})

    @property
    def client_caused(self) -> bool:
        """The client's request caused this status (:data:`CLIENT_STATUSES`)."""
        return self.status in CLIENT_STATUSES

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    def body(self) -> bytes:
        return self._body


class ConfigError(ValueError):
    """A configuration that fails validation; the gateway keeps serving its previous one."""


@contextlib.contextmanager
def map_client_errors(role: str) -> Iterator[None]:
    """Map aiohttp client errors raised inside the block to the gateway's own errors.

    The message names ``role`` and what failed, with the OS's reason ("Connection reset by
    peer"), never an address. Timeouts are not mapped here: the proxy bounds each call with
    ``asyncio.timeout``.

    Raises:
        UpstreamUnavailable: connect errors, a dropped connection, a broken or malformed
            answer.
    """
    upstream = f"the upstream of role {role!r}"
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        reason = os_reason(exc.os_error)
        raise UpstreamUnavailable(f"{upstream} is unreachable: {reason}") from exc
    except aiohttp.ServerDisconnectedError as exc:
        message = f"{upstream} closed the connection without answering"
        raise UpstreamUnavailable(message) from exc
    except aiohttp.ClientPayloadError as exc:
        message = f"{upstream} broke off its answer (or sent an undecodable body)"
        raise UpstreamUnavailable(message) from exc
    except (aiohttp.ClientOSError, ConnectionError) as exc:
        message = f"the connection to {upstream} failed: {os_reason(exc)}"
        raise UpstreamUnavailable(message) from exc
    except aiohttp.ClientResponseError as exc:
        raise UpstreamUnavailable(f"{upstream} sent a malformed HTTP answer") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"{upstream} failed: {type(exc).__name__}") from exc


def os_reason(exc: OSError) -> str:
    """An OS error's reason without the address asyncio puts in its text:
    "Connection refused", "Connection reset by peer", "Name or service not known",
    "TLS: CERTIFICATE_VERIFY_FAILED"."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)  # set by the ssl module, not by every raiser
        return f"TLS: {reason}" if reason else "TLS handshake failed"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or "name resolution failed"
    if isinstance(exc.errno, int) and exc.errno > 0:
        return os.strerror(exc.errno)
    if isinstance(exc, TimeoutError):
        return "timed out"
    match exc:
        case ConnectionResetError():
            return "connection reset"
        case BrokenPipeError():
            return "broken pipe"
        case ConnectionRefusedError():
            return "connection refused"
        case _:
            return type(exc).__name__


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
