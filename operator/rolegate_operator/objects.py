"""Raw API objects as the operator reads them: an LLMRole as a :class:`render.RoleObject`,
a Secret's role-related keys, a Secret as a client API key (its hash, never the key), and
whether the live config Secret already holds a rendered one.

Pure (no I/O) but for the log line that says why a labelled Secret is no API key.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from rolegate_gateway import apikeys
from rolegate_gateway.config import API_KEY_DATA_KEY
from rolegate_gateway.roles import SECRET_KEYS
from rolegate_operator import render
from rolegate_operator.store import ApiKeyEntry, Key, Store, key_of, version_of

__all__ = [
    "api_key_entry",
    "api_keys_listed",
    "left_out",
    "new_refusal",
    "role_object",
    "same_config",
    "secret_keys",
]

log = logging.getLogger(__name__)


def role_object(body: Mapping[str, Any]) -> render.RoleObject:
    """A :class:`render.RoleObject` from a raw LLMRole (as kopf or the API hands it)."""
    meta = body.get("metadata") or {}
    return render.RoleObject(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        created=str(meta.get("creationTimestamp", "")),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def secret_keys(body: Mapping[str, Any]) -> dict[str, str]:
    """The role-related keys of a raw Secret, decoded (``data`` is base64, per the API).

    Keys that are not valid base64 UTF-8 are left out (the role then reports KeyMissing).
    So is the ``apiKey`` of a client API-key Secret (:func:`api_key_entry`): the operator
    keeps no client key, and a client's key is never sent upstream as a role's.
    """
    out = {}
    client_key = apikeys.is_api_key((body.get("metadata") or {}).get("labels"))
    for key, value in (body.get("data") or {}).items():
        if key in SECRET_KEYS and not (client_key and key == API_KEY_DATA_KEY):
            try:
                out[key] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, TypeError):
                continue
    return out


def api_key_entry(body: Mapping[str, Any]) -> ApiKeyEntry:
    """A raw Secret as a client API key: its :class:`ApiKey` (the hash of the key) when it
    is labelled ``rolegate.dev/api-key: "true"`` and its ``apiKey`` is valid, the reason it
    is none when labelled but not valid (see :func:`rolegate_gateway.apikeys.api_key_from`),
    None when not labelled."""
    meta = body.get("metadata") or {}
    if not apikeys.is_api_key(meta.get("labels")):
        return None
    namespace, name = key_of(body)
    return apikeys.api_key_from(
        namespace, name, annotations=meta.get("annotations"), data=body.get("data")
    )


def left_out(key: Key, reason: ApiKeyEntry) -> None:
    """Say that the labelled Secret ``key`` is no API key, and why (never its value)."""
    log.warning(
        "API key Secret %s/%s is left out of the gateway config: %s",
        *key,
        reason,
        extra={"secret": f"{key[0]}/{key[1]}"},
    )


def new_refusal(store: Store, key: Key, version: int, entry: ApiKeyEntry) -> bool:
    """True when ``entry`` is a reason the Secret ``key`` is no API key that ``store`` does
    not hold yet at ``version`` (an event and then a fresh list of the same Secret version:
    said once)."""
    return isinstance(entry, str) and store.api_keys.entries.get(key) != (version, entry)


def api_keys_listed(
    store: Store, secrets: Iterable[Mapping[str, Any]]
) -> list[tuple[Key, int, ApiKeyEntry]]:
    """Listed Secrets as client API keys (for ``Section.replace``); logs the reasons not
    said before (:func:`new_refusal`)."""
    out = []
    for body in secrets:
        key, version, entry = key_of(body), version_of(body), api_key_entry(body)
        if new_refusal(store, key, version, entry):
            left_out(key, entry)
        out.append((key, version, entry))
    return out


def same_config(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """The live config Secret already holds ``body``'s config, labels, annotations and
    owner."""
    data = current.get("data") or {}
    meta, want = current.get("metadata") or {}, body["metadata"]
    owners = [(o.get("kind"), o.get("uid")) for o in meta.get("ownerReferences") or ()]
    wanted = [(o["kind"], o["uid"]) for o in want.get("ownerReferences") or ()]
    return (
        owners == wanted
        and data == body["data"]
        and all((meta.get("labels") or {}).get(k) == v for k, v in want["labels"].items())
        and all((meta.get("annotations") or {}).get(k) == v for k, v in want["annotations"].items())
    )
