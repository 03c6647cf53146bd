"""Client API keys from labelled Secrets: which Secret is one, and what the config holds of it.

Owns the one reading of an API-key Secret that both config sources share: the operator
(Secrets from the Kubernetes API) and the manifests loader (Secret documents on disk). A
Secret labelled ``rolegate.dev/api-key: "true"`` (:data:`~rolegate_gateway.config.API_KEY_LABEL`)
with data key ``apiKey`` becomes an :class:`~rolegate_gateway.config.ApiKey`: its sha256,
never the key, and the roles of its ``rolegate.dev/roles`` annotation. A labelled Secret
whose key is missing, not base64 UTF-8, empty, not printable ASCII or shorter than
:data:`~rolegate_gateway.config.MIN_API_KEY_CHARS` is no key: the caller gets the reason
(which never holds the value), leaves it out of the config and says so.

Whitespace around the key is stripped: ``echo`` without ``-n`` leaves a newline in a file
made for ``kubectl create secret --from-file``, and no HTTP header can carry one (a client
sends the key without it). What is left must be printable ASCII, as a bearer token is.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from rolegate_gateway.config import (
    API_KEY_DATA_KEY,
    API_KEY_LABEL,
    MIN_API_KEY_CHARS,
    ROLES_ANNOTATION,
    ApiKey,
    key_digest,
)

__all__ = ["EVERY_ROLE", "api_key_from", "is_api_key", "parse_roles"]

#: Every role: the annotation value, and the one entry of :attr:`ApiKey.roles` it becomes.
EVERY_ROLE = "*"


def is_api_key(labels: object) -> bool:
    """True when a Secret's ``metadata.labels`` (a mapping, or anything else: not labelled)
    carry ``rolegate.dev/api-key: "true"``."""
    return isinstance(labels, Mapping) and labels.get(API_KEY_LABEL) == "true"


def parse_roles(annotation: str | None) -> tuple[str, ...] | None:
    """The roles an annotation ``rolegate.dev/roles`` names, sorted and without duplicates.

    ``"extract, query"`` -> ``("extract", "query")``: comma-separated names, whitespace
    around each stripped, empty ones dropped. A ``*`` among them means every role:
    ``("*",)``. ``None`` (no annotation) -> None. A present annotation that names nothing
    (``""``, ``" , "``) -> ``()``: no role (``--auth keys`` then refuses every call).
    """
    if annotation is None:
        return None
    names = {part.strip() for part in annotation.split(",")} - {""}
    if EVERY_ROLE in names:
        return (EVERY_ROLE,)
    return tuple(sorted(names))


def _decoded(value: object) -> str | None:
    """A ``data`` value (base64, per the API) as UTF-8 text; None when it is not."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def api_key_from(
    namespace: str,
    name: str,
    *,
    annotations: object,
    data: object,
    string_data: object = None,
) -> ApiKey | str:
    """The :class:`ApiKey` of a Secret labelled as one (see :func:`is_api_key`), or the
    reason it is none.

    ``data`` is the Secret's ``data`` (values base64, as the API holds them) and
    ``string_data`` its ``stringData`` (plain; a manifest's, or an environment override),
    whose ``apiKey`` wins over ``data``'s as the API server does. ``annotations`` is its
    ``metadata.annotations``: ``rolegate.dev/roles`` gives :attr:`ApiKey.roles` (see
    :func:`parse_roles`). Either may be None or malformed: that is a reason, not an error.

    Returns:
        the ApiKey (``sha256`` = :func:`~rolegate_gateway.config.key_digest` of the key
        without surrounding whitespace), or a reason such as ``"data key 'apiKey' is shorter than 16
        characters"``, for a log line; a reason never contains the key.
    """
    if not namespace or not name:
        return "the Secret has no namespace or name"
    key: str | None = None
    plain = string_data.get(API_KEY_DATA_KEY) if isinstance(string_data, Mapping) else None
    if plain is not None:
        if not isinstance(plain, str):
            return f"stringData key {API_KEY_DATA_KEY!r} is not a string"
        key = plain
    else:
        encoded = data.get(API_KEY_DATA_KEY) if isinstance(data, Mapping) else None
        if encoded is None:
            return f"no data key {API_KEY_DATA_KEY!r}"
        key = _decoded(encoded)
        if key is None:
            return f"data key {API_KEY_DATA_KEY!r} is not base64-encoded UTF-8"
    key = key.strip(" \t\r\n")
    if not key:
        return f"data key {API_KEY_DATA_KEY!r} is empty"
    if not key.isascii() or not key.isprintable():
        return (
            f"data key {API_KEY_DATA_KEY!r} holds characters a bearer token cannot "
            "(RFC 6750: printable ASCII)"
        )
    if len(key) < MIN_API_KEY_CHARS:
        return (
            f"data key {API_KEY_DATA_KEY!r} is shorter than {MIN_API_KEY_CHARS} characters "
            "(a short key can be guessed from its hash; make one with `openssl rand -hex 32`)"
        )
    annotation = annotations.get(ROLES_ANNOTATION) if isinstance(annotations, Mapping) else None
    if annotation is not None and not isinstance(annotation, str):
        return f"annotation {ROLES_ANNOTATION!r} is not a string"
    return ApiKey(
        namespace=namespace, name=name, sha256=key_digest(key), roles=parse_roles(annotation)
    )
