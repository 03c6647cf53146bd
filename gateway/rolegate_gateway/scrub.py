"""Removing a role's credentials from upstream error bodies before a client sees them.

Owns :class:`Scrubber`. An upstream may echo the key it was sent in an error body (a
proxy's debug page, a server quoting its request), raw or encoded. For each secret a
:class:`Scrubber` removes:

- its raw bytes, whatever its length;
- its percent-encoded forms (RFC 3986 section 2.1): ``quote``, ``quote(safe="")`` and
  ``quote_plus`` (``+`` for a space), and any mix of escaped and literal characters, hex
  digits in either case;
- its JSON string escapes (RFC 8259 section 7): any character as ``\\uXXXX`` in either
  case (a surrogate pair above U+FFFF), ``\\/``, ``\\"``, ``\\\\``; mixed with the above;
- its base64 forms (RFC 4648 sections 4 and 5: standard and URL-safe alphabets, padded or
  not) at each of the three byte alignments a secret can have inside a longer encoded
  string: the characters that depend on the secret's bytes alone are removed; the one or
  two characters at each end that mix in neighbouring bytes stay (they carry at most 4 bits
  of the secret's first and last byte);
- its hexadecimal form, either case;
- a masked form as OpenAI prints it in a 401 ("sk-abc12****wxyz": the secret's first three
  characters, more word characters, a run of ``*``, ``…`` or ``...``, its last four), and
  a run of three or more ``*`` followed by its last four;
- all of the above in every string (and key) of a JSON body after JSON decoding, so that
  layered forms (a ``\\u``-escaped base64 form) are caught; the body is re-encoded only
  when something was removed.

The encoded and masked forms are matched only for secrets of at least
:data:`MIN_FUZZY_CHARS` characters: shorter ones are placeholders (``EMPTY``) whose
encodings would match ordinary text.

Not covered: a secret split across JSON strings or across lines (MIME base64 wrapped at
76 columns), other encodings (base32, compressed, encrypted), and two layers of the same
encoding (a percent-encoded percent-encoding).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MIN_FUZZY_CHARS", "Scrubber"]

#: Secrets shorter than this are removed as raw bytes only.
MIN_FUZZY_CHARS = 8

_URLSAFE = bytes.maketrans(b"+/", b"-_")


class Scrubber:
    """Removes a fixed set of secrets, in the forms the module docstring lists.

    Built once per role wrapper, its patterns compiled on the first :meth:`scrub` (the
    first error body of that wrapper; ~20 ms for a 72-character key), not when built: a
    config of 10,000 roles would otherwise spend minutes compiling patterns that most roles
    never use. :meth:`scrub` is meant for error bodies, which the proxy caps at 1 MiB: it
    costs a few regex passes per secret.
    """

    __slots__ = ("_literals", "_patterns", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets: tuple[str, ...] | None = tuple(s for s in secrets if s)
        self._literals: list[bytes] = []
        self._patterns: list[re.Pattern[bytes]] = []

    def _compile(self) -> None:
        """Build the literals and patterns of the secrets (once)."""
        if self._secrets is None:
            return
        literals: set[bytes] = set()
        patterns: list[re.Pattern[bytes]] = []
        for secret in self._secrets:
            raw = secret.encode()
            literals.add(raw)
            if len(secret) < MIN_FUZZY_CHARS:
                continue
            literals.update((raw.hex().encode(), raw.hex().upper().encode()))
            for core in _base64_cores(raw):
                literals.update((core, core.translate(_URLSAFE)))
            patterns.append(re.compile(b"".join(_char_pattern(ch) for ch in secret)))
            patterns.extend(_masked_patterns(secret))
        # longest first, so a literal that contains another is removed whole
        self._literals = sorted(literals, key=len, reverse=True)
        self._patterns = patterns
        self._secrets = None

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every covered form of every secret removed (see the module)."""
        self._compile()
        if not self._literals:
            return data
        return self._scrub_bytes(self._scrub_json(data))

    def _scrub_bytes(self, data: bytes) -> bytes:
        for literal in self._literals:
            data = data.replace(literal, b"")
        for pattern in self._patterns:
            data = pattern.sub(b"", data)
        return data

    def _scrub_json(self, data: bytes) -> bytes:
        try:
            doc = json.loads(data)
            clean, changed = self._clean(doc)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to walk
            return data
        if not changed:
            return data
        return json.dumps(clean).encode()  # ASCII: a lone surrogate in it stays escaped

    def _clean(self, value: Any) -> tuple[Any, bool]:
        """``value`` (decoded JSON) with its strings scrubbed; and whether any changed."""
        if isinstance(value, str):
            encoded = value.encode("utf-8", "surrogatepass")
            clean = self._scrub_bytes(encoded)
            if clean == encoded:
                return value, False
            return clean.decode("utf-8", "replace"), True
        if isinstance(value, list):
            items = [self._clean(item) for item in value]
            return [item for item, _ in items], any(changed for _, changed in items)
        if isinstance(value, dict):
            pairs = [(self._clean(k), self._clean(v)) for k, v in value.items()]
            changed = any(kc or vc for (_, kc), (_, vc) in pairs)
            return {k: v for (k, _), (v, _) in pairs}, changed
        return value, False


def _hex(value: int, width: int) -> bytes:
    """``value`` as ``width`` hex digits, each letter matching either case."""
    return b"".join(
        f"[{d}{d.upper()}]".encode() if d.isalpha() else d.encode() for d in f"{value:0{width}x}"
    )


def _char_pattern(ch: str) -> bytes:
    """One character of a secret: literal, percent-encoded or JSON-escaped."""
    raw = ch.encode()
    alternatives = [re.escape(raw), b"".join(b"%" + _hex(byte, 2) for byte in raw)]
    code = ord(ch)
    if code < 0x10000:
        alternatives.append(rb"\\u" + _hex(code, 4))
    else:
        code -= 0x10000
        high, low = 0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)
        alternatives.append(rb"\\u" + _hex(high, 4) + rb"\\u" + _hex(low, 4))
    extra = {"/": rb"\\/", " ": rb"\+", '"': rb"\\\"", "\\": rb"\\\\"}.get(ch)
    if extra is not None:
        alternatives.append(extra)
    return b"(?:" + b"|".join(alternatives) + b")"


def _base64_cores(raw: bytes) -> list[bytes]:
    """The base64 characters fixed by ``raw`` alone, for each of its 3 byte alignments.

    With ``o`` bytes before ``raw`` in the encoded string (o mod 3), output character
    ``i`` covers bits ``6i .. 6i+5``; those wholly inside ``raw``'s bits ``8o ..
    8(o+len)-1`` do not depend on the neighbours.
    """
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw)
        start = -(-8 * offset // 6)  # ceil
        end = 8 * (offset + len(raw)) // 6
        core = encoded[start:end]
        if len(core) >= MIN_FUZZY_CHARS:
            cores.append(core)
    return cores


def _masked_patterns(secret: str) -> list[re.Pattern[bytes]]:
    """OpenAI-style masked forms: ``sk-abc12****wxyz``, ``sk-abc…wxyz``, ``****wxyz``."""
    head, tail = re.escape(secret[:3].encode()), re.escape(secret[-4:].encode())
    mask = rb"(?:\*+|\xe2\x80\xa6|\.\.\.)"
    return [
        re.compile(head + rb"[\w\-]*" + mask + tail),
        re.compile(rb"\*{3,}" + tail),
    ]
