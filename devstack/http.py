"""Plain HTTP GETs of the local stack's health and status endpoints (urllib, blocking).

One call, :func:`get`, answers with the status and body of any HTTP answer (4xx and 5xx
included: a readiness probe reads them too) and raises OSError only when nothing answered.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "get", "get_json", "get_text", "insecure_tls"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: its status code and body bytes."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON.

        Raises:
            ValueError: it is not JSON.
        """
        return json.loads(self.body)

    def text(self) -> str:
        """The body as UTF-8 text, stripped."""
        return self.body.decode("utf-8", "replace").strip()


def get(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> Answer:
    """GET ``url``; any status is an answer.

    Raises:
        OSError: no answer (refused, reset, TLS failure, or none within ``timeout_s``
            seconds; urllib.error.URLError is an OSError).
    """
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_s) as response:
            return Answer(int(response.status), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.read())


def get_json(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> Any:
    """GET ``url`` and decode its JSON body, whatever the status.

    Raises:
        OSError: as :func:`get`.
        ValueError: the body is not JSON.
    """
    return get(url, context=context, headers=headers, timeout_s=timeout_s).json()


def get_text(url: str, *, context: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> str:
    """GET ``url`` and return its stripped body, whatever the status; errors as :func:`get`."""
    return get(url, context=context, timeout_s=timeout_s).text()


def insecure_tls() -> ssl.SSLContext:
    """A TLS context that accepts any certificate: for self-signed ``/healthz`` endpoints."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
