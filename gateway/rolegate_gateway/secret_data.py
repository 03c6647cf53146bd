"""The layout of the config Secret's ``data``: how ``GatewayConfig.to_wire()`` is stored.

Owns the keys (:data:`CONFIG_GZ_KEY`, written; :data:`CONFIG_KEY`, the format before it,
still read), :func:`encode` and :func:`decode`, and the size a Secret may hold
(:data:`SECRET_MAX_BYTES`). No Kubernetes import: the operator renders with it, the gateway
reads with it.

Why gzip, in one Secret: a role's wire form is ~500 bytes (names, upstream URL, model,
options, limits and a resolved API key), so uncompressed JSON outgrows a Secret's 1 MiB
near 2,000 roles. gzip (level 9, ``mtime`` 0 so equal configs encode to equal bytes)
shrinks it ~8x: measured (``python -m bench.scale``) with 10,000 roles with realistic
names and a distinct random API key each (72 characters), 5.0 MB of JSON is 633 KB
gzipped (63 bytes a role, most of it the key's own randomness, which nothing compresses):
1.66x under the limit. One Secret keeps a config change atomic for free (one object, one
write, one watch event: a gateway never sees half of an old and half of a new config) and
needs no new RBAC and no new Secret names. The ceiling is the API keys' randomness:
~16,500 roles with 72-character keys, ~22,000 with 51, ~7,800 with 164 (OpenAI's project
keys). Past it the operator does not write, the gateway keeps serving the last config, and
every served role says why (``Ready=False, ConfigTooLarge``, with an Event). Past that
ceiling the next step is sharding over several Secrets named by a manifest with their
hashes; not done.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Mapping

from rolegate_gateway import errors

__all__ = [
    "CONFIG_GZ_KEY",
    "CONFIG_KEY",
    "MAX_CONFIG_BYTES",
    "SECRET_MAX_BYTES",
    "decode",
    "encode",
    "encoded_key",
    "stored_bytes",
]

#: The key the operator writes: ``GatewayConfig.to_wire()`` gzipped (RFC 1952).
CONFIG_GZ_KEY = "config.json.gz"
#: The key an operator before gzip wrote (plain JSON); read when there is no gzipped one,
#: so a new gateway serves an old operator's Secret during a rolling upgrade.
CONFIG_KEY = "config.json"
#: Bytes of ``data`` one Secret may hold (the decoded values summed): the API server's
#: ``MaxSecretSize``, 1 MiB (https://kubernetes.io/docs/concepts/configuration/secret/#restriction-data-size).
SECRET_MAX_BYTES = 1024 * 1024
#: Decompressed bytes a gateway accepts (a bound against a gzip bomb in a hand-written
#: Secret): 64 MiB, ~120,000 roles' worth, several times what a Secret can hold gzipped,
#: and little enough to parse without endangering the gateway's memory (a refused config
#: keeps the last good one serving; an OOM kill would serve nothing).
MAX_CONFIG_BYTES = 64 * 1024 * 1024


def encode(raw: bytes) -> dict[str, str]:
    """The config Secret's ``data`` (base64 values, as the API wants them) for ``raw``
    (``GatewayConfig.to_wire()``): one key, :data:`CONFIG_GZ_KEY`. Deterministic: equal
    ``raw`` gives equal data (gzip level 9, no timestamp)."""
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return {CONFIG_GZ_KEY: base64.b64encode(packed).decode()}


def stored_bytes(data: Mapping[str, str]) -> int:
    """Bytes the API server counts against :data:`SECRET_MAX_BYTES`: the decoded values
    summed (base64 is 4 characters per 3 bytes)."""
    return sum(len(v) * 3 // 4 - v.count("=") for v in data.values())


def encoded_key(data: Mapping[str, str]) -> tuple[str, str] | None:
    """(key, base64 value) of the config in a Secret's ``data``: the gzipped key when
    present, else the plain one; None when neither."""
    for key in (CONFIG_GZ_KEY, CONFIG_KEY):
        if data.get(key):
            return key, data[key]
    return None


def decode(data: Mapping[str, str]) -> bytes:
    """The config's wire bytes from a Secret's ``data`` (values base64): from
    :data:`CONFIG_GZ_KEY` when present, else from :data:`CONFIG_KEY` (plain JSON).

    Raises:
        errors.ConfigError: neither key, a value that is not base64, not gzip, or that
            decompresses past :data:`MAX_CONFIG_BYTES`.
    """
    found = encoded_key(data)
    if found is None:
        raise errors.ConfigError(f"no key {CONFIG_GZ_KEY!r} or {CONFIG_KEY!r}")
    key, encoded = found
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise errors.ConfigError(f"{key} is not base64: {exc}") from exc
    if key == CONFIG_KEY:
        return raw
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        out = inflate.decompress(raw, MAX_CONFIG_BYTES)
        if inflate.unconsumed_tail:
            raise errors.ConfigError(f"{key} decompresses to more than {MAX_CONFIG_BYTES} bytes")
        out += inflate.flush()
    except zlib.error as exc:
        raise errors.ConfigError(f"{key} is not gzip: {exc}") from exc
    if not inflate.eof:
        raise errors.ConfigError(f"{key} is not gzip: truncated")
    return out
