"""SigV4 signatures of bedrock requests, as botocore's ``SigV4Auth`` makes them, with what
repeats from one request to the next computed once.

Owns :class:`Signer`. botocore's signer, called per request, builds an ``AWSRequest``,
parses the URL again, canonicalises its path and host again and derives the signing key
again (four HMACs) on every call: ~0.35 ms of the gateway's CPU per bedrock call,
profiled at 8 concurrent streams, about a fifth of the gateway's CPU on that path. Here
the canonical path and host are kept per URL and the signing key per secret and day, so a
request costs two SHA-256 digests (body, canonical request) and one HMAC.

botocore stays the reference. The canonical path is botocore's ``normalize_url_path``
quoted once more with ``safe="/~"``, as botocore quotes it; the headers botocore never
signs are its own list; and the tests verify every signature with botocore. A request
outside what this covers is signed by botocore itself: a URL with a query string or
fragment, an IPv6 host, or headers whose names differ only in case, or that carry
``X-Amz-Content-SHA256``, ``Date``, or an ``X-Amz-Security-Token`` without session
credentials.

Sources: AWS, "Create a signed AWS API request"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html);
botocore ``auth.py`` (``SigV4Auth``: ``canonical_request``, ``headers_to_sign``,
``_header_value``, ``payload``, ``signature``, ``_modify_request_before_signing``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.compat
import botocore.credentials
import botocore.utils
from yarl import URL

__all__ = ["Signer"]

_ALGORITHM = "AWS4-HMAC-SHA256"
#: Headers botocore leaves out of a signature (lower case).
_UNSIGNED = frozenset(botocore.auth.SIGNED_HEADERS_BLACKLIST)
#: Headers the signer itself sets, replacing a caller's (lower case).
_REPLACED = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: URLs and (secret, day) signing keys kept per signer; past it, the cache starts over.
_CACHED = 64

_Credentials = botocore.credentials.ReadOnlyCredentials


class Signer:
    """Signs POST requests for one region and service (e.g. ``us-east-1``, ``bedrock``).

    One per role: single-threaded (the event loop), its caches bounded by :data:`_CACHED`.
    """

    __slots__ = ("_keys", "_region", "_service", "_targets")

    def __init__(self, region: str, service: str) -> None:
        self._region = region
        self._service = service
        #: (secret key, YYYYMMDD) -> the signing key of that day
        self._keys: dict[tuple[str, str], bytes] = {}
        #: URL -> (canonical path, host header value); None: botocore signs it
        self._targets: dict[URL, tuple[str, str] | None] = {}

    def sign(
        self, url: URL, headers: Mapping[str, str], body: bytes, credentials: _Credentials
    ) -> dict[str, str]:
        """``headers`` plus ``X-Amz-Date`` (now, by botocore's clock, ``YYYYMMDDTHHMMSSZ``),
        ``X-Amz-Security-Token`` (session credentials only) and ``Authorization``
        (``AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
        SignedHeaders=..., Signature=<64 hex>``): a POST of ``body`` to ``url`` (sent as
        it is encoded), signing ``host`` and every header of ``headers`` botocore signs.
        """
        target = self._target(url)
        lower = {name.lower(): name for name in headers}
        secret = credentials.secret_key
        if (
            target is None
            or secret is None
            or len(lower) != len(headers)
            or "x-amz-content-sha256" in lower
            or "date" in lower  # botocore signs with it, in place of X-Amz-Date
            or ("x-amz-security-token" in lower and not credentials.token)  # botocore keeps it
        ):
            return _botocore_sign(url, headers, body, credentials, self._region, self._service)
        path, host = target
        stamp = botocore.compat.get_current_datetime().strftime(botocore.auth.SIGV4_TIMESTAMP)
        day = stamp[:8]
        out = {name: value for name, value in headers.items() if name.lower() not in _REPLACED}
        out["X-Amz-Date"] = stamp
        if credentials.token:
            out["X-Amz-Security-Token"] = credentials.token
        signed = {"host": host} if "host" not in lower else {}
        for name, value in out.items():
            key = name.lower()
            if key not in _UNSIGNED:
                signed[key] = " ".join(value.split())
        names = sorted(signed)
        signed_headers = ";".join(names)
        canonical = "POST\n%s\n\n%s\n\n%s\n%s" % (  # noqa: UP031 (the spec's layout)
            path,
            "\n".join(f"{name}:{signed[name]}" for name in names),
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = "\n".join(
            (_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(self._key(secret, day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (
            f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return out

    def _target(self, url: URL) -> tuple[str, str] | None:
        try:
            return self._targets[url]
        except KeyError:
            pass
        target: tuple[str, str] | None = None
        # urllib's parts of the URL as sent, as botocore takes them (yarl's ``host`` would
        # turn a punycode name back into Unicode; the Host header aiohttp sends keeps it)
        parts = urlsplit(str(url))
        host = parts.hostname
        if not parts.query and not parts.fragment and host and ":" not in host:
            path = quote(botocore.utils.normalize_url_path(parts.path), safe="/~")
            port = parts.port
            if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
                host = f"{host}:{port}"
            target = (path, host)
        if len(self._targets) >= _CACHED:
            self._targets.clear()
        self._targets[url] = target
        return target

    def _key(self, secret: str, day: str) -> bytes:
        try:
            return self._keys[secret, day]
        except KeyError:
            pass
        key = f"AWS4{secret}".encode()
        for part in (day, self._region, self._service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(self._keys) >= _CACHED:
            self._keys.clear()
        self._keys[secret, day] = key
        return key


def _botocore_sign(
    url: URL,
    headers: Mapping[str, str],
    body: bytes,
    credentials: _Credentials,
    region: str,
    service: str,
) -> dict[str, str]:
    """The same signature by botocore's ``SigV4Auth`` (the requests :class:`Signer` does not
    cover)."""
    aws = botocore.awsrequest.AWSRequest(
        method="POST", url=str(url), data=body, headers=dict(headers)
    )
    botocore.auth.SigV4Auth(credentials, service, region).add_auth(aws)
    return dict(aws.headers.items())
