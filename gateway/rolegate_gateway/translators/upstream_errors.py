"""Upstream error answers -> the client's error: the parts every translator shares.

An upstream's error body has already been scrubbed of the role's credentials
(``rolegate_gateway.scrub``) when it reaches these functions. Each answer keeps the
upstream's rate-limit headers (``upstream.passed_headers``) so the OpenAI SDK's backoff
sees them. Messages name the role, never the upstream's address.

- :func:`openai_error`: an OpenAI-compatible upstream's error, passed on (its own body when
  it is OpenAI's shape, else wrapped);
- :func:`mapped_error`: a provider's error already read into (status, type, message),
  rendered as OpenAI's body (the anthropic and bedrock translators);
- :func:`credentials_refused`: the upstream refused the role's own credentials: the
  client did nothing wrong, so the message says whose key needs fixing.
"""

from __future__ import annotations

import json
from typing import Any

from multidict import CIMultiDictProxy

from rolegate_gateway import errors, upstream

__all__ = ["credentials_refused", "json_object", "mapped_error", "openai_error", "wrapped"]


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed when it is a JSON object, else None."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


#: Where AWS's signature errors start quoting what was signed (the canonical request holds
#: x-amz-security-token): https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-troubleshooting.html
_SIGNING_DETAIL = ("\n\n", "The Canonical String", "The String-to-Sign")


def _said(text: object) -> str:
    return str(text).strip()[:1000] if text is not None else ""


def credentials_refused(
    role: str, status: int, headers: CIMultiDictProxy[str], said: object
) -> errors.UpstreamStatusError:
    """The upstream refused the role's credentials (401, or a provider's signature or key
    error): the status is kept, the message names the role's Secret. Only the first
    paragraph of the upstream's text is quoted: AWS follows a signature mismatch with the
    canonical request it expected, whose headers hold the session token (a token from the
    pod's identity is not in the role's config, so scrubbing cannot know it)."""
    text = _said(said)
    for marker in _SIGNING_DETAIL:
        text = text.split(marker, 1)[0].strip()
    message = f"the upstream of role {role!r} answered {status}"
    body = errors.error_body(
        f"the upstream of role {role!r} refused the role's credentials ({status}); the key "
        "in the role's Secret needs fixing" + (f". It said: {text[:500]}" if text else ""),
        type_="upstream_error",
        code="upstream_unauthorized",
    )
    return errors.UpstreamStatusError(
        status, body, message=message, headers=upstream.passed_headers(headers)
    )


def wrapped(
    role: str, status: int, headers: CIMultiDictProxy[str], text: str
) -> errors.UpstreamStatusError:
    """An error answer that is not in any format the gateway knows: its text (cut to
    1,000 characters) in OpenAI's body, ``type`` ``upstream_error``, status kept."""
    message = f"the upstream of role {role!r} answered {status}"
    text = text.strip()[:1000]
    body = errors.error_body(
        message + (f": {text}" if text else ""), type_="upstream_error", code=str(status)
    )
    return errors.UpstreamStatusError(
        status, body, message=message, headers=upstream.passed_headers(headers)
    )


def mapped_error(
    role: str,
    status: int,
    headers: CIMultiDictProxy[str],
    *,
    type_: str,
    text: str,
    code: str | None = None,
) -> errors.UpstreamStatusError:
    """A provider error read as (``status`` for the client, OpenAI ``type_``, ``text``),
    as OpenAI's error body; ``code`` defaults to ``type_``."""
    message = f"the upstream of role {role!r} answered {status}"
    body = errors.error_body(text.strip()[:4000], type_=type_, code=code or type_)
    return errors.UpstreamStatusError(
        status, body, message=message, headers=upstream.passed_headers(headers)
    )


def openai_error(
    role: str, status: int, headers: CIMultiDictProxy[str], body: bytes
) -> errors.UpstreamStatusError:
    """An OpenAI-compatible upstream's error: its body passed on when it holds OpenAI's
    ``{"error": {...}}``, else wrapped; a 401 becomes :func:`credentials_refused`
    (OpenAI's own message names the key by its first and last characters, a form the
    scrubbing removes)."""
    parsed = json_object(body)
    error = parsed.get("error") if parsed is not None else None
    if status == 401:
        said = error.get("message") if isinstance(error, dict) else None
        return credentials_refused(
            role, status, headers, said if said is not None else body.decode(errors="replace")
        )
    if isinstance(error, dict):
        message = f"the upstream of role {role!r} answered {status}"
        return errors.UpstreamStatusError(
            status, body, message=message, headers=upstream.passed_headers(headers)
        )
    return wrapped(role, status, headers, body.decode(errors="replace"))
