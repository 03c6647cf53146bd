"""The upstream exchange's pure parts: Retry-After, passed headers, OS reasons."""

from __future__ import annotations

import errno
import socket
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from rolegate_gateway import errors, upstream


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, 0.0),
        ({"Retry_After": "7"}, 7.0),
        ({"Retry_After": "0.5"}, 0.5),
        ({"Retry_After": "-3"}, 0.0),
        ({"Retry_After": "soon"}, 0.0),
        ({"Retry_After": "nan"}, 0.0),
        ({"retry_after_ms": "1500", "Retry_After": "7"}, 1.5),  # the finer one wins
        ({"retry_after_ms": "x", "Retry_After": "2"}, 2.0),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float) -> None:
    assert upstream.retry_after_s(_headers(**headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    """RFC 9110 section 10.2.3: an IMF-fixdate in GMT."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= upstream.retry_after_s(_headers(Retry_After=when)) <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert upstream.retry_after_s(_headers(Retry_After=past)) == 0.0


def test_rate_limit_headers_are_passed_on_and_nothing_else() -> None:
    headers = CIMultiDict(
        [
            ("Retry-After", "7"),
            ("retry-after-ms", "7000"),
            ("x-ratelimit-remaining-requests", "0"),
            ("X-RateLimit-Reset-Tokens", "1s"),
            ("x-ratelimit-remaining-requests", "duplicate"),
            ("Set-Cookie", "session=secret"),
            ("Server", "internal-lb-10.0.0.5"),
            ("Content-Type", "application/json"),
        ]
    )
    assert upstream.passed_headers(CIMultiDictProxy(headers)) == {
        "Retry-After": "7",
        "retry-after-ms": "7000",
        "x-ratelimit-remaining-requests": "0",
        "X-RateLimit-Reset-Tokens": "1s",
    }


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            OSError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.5', 8000)"),
            "Connection refused",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "Connection reset by peer",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "Name or service not known",
        ),
        (
            ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] x"),
            "TLS handshake failed",
        ),
        (ConnectionResetError("Cannot write to closing transport"), "connection reset"),
        (TimeoutError(), "timed out"),
    ],
)
def test_os_reasons_name_no_address(exc: OSError, reason: str) -> None:
    assert errors.os_reason(exc) == reason
