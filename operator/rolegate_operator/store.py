"""What the operator sees: every LLMRole, every Secret's role-related keys, every client
API key (its hash only) and every gateway replica's Lease, kept current by watch events and
made true again by fresh lists from the API.

kopf's watch keeps this view current between lists, but a watch can have gaps: after an API
server restart, or when the resourceVersion it resumes from fell out of the server's window
(410 Gone), kopf lists the objects again and never learns which ones were deleted meanwhile.
So the view is also *replaced* from a fresh list (each timed resync, and after a watch listed
anew), which drops what the list no longer holds.

Events and lists race: an event may arrive while a list is in flight, so a list must not undo
a newer event. Each entry keeps the resourceVersion it was seen at, each deletion a tombstone
with its own, and :meth:`Section.replace` keeps what is newer than the list's resourceVersion.
Kubernetes calls resourceVersions opaque, but its etcd storage makes them etcd revisions
(integers that only grow), and watch resumption compares them the same way; a version that
is not an integer counts as older than any list, so the list wins (the API's truth).

Pure: no I/O, no kopf. Not thread-safe: the event loop's thread only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rolegate_gateway.config import ApiKey
from rolegate_gateway.leases import Seen

__all__ = ["ApiKeyEntry", "Key", "Section", "Store", "resource_version"]

#: (namespace, name) of an object.
Key = tuple[str, str]
_V = TypeVar("_V")
#: What the store holds of one Secret as a client API key: its :class:`ApiKey` (the hash,
#: never the key), the reason a labelled Secret is no key (for a log line once per change),
#: or None: not labelled as one.
ApiKeyEntry = ApiKey | str | None


def resource_version(value: object) -> int:
    """A resourceVersion as an integer; -1 when it is missing or not an integer."""
    try:
        return int(str(value))
    except ValueError:
        return -1


def key_of(body: Mapping[str, Any]) -> Key:
    """(namespace, name) of a raw object."""
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def version_of(body: Mapping[str, Any]) -> int:
    """The resourceVersion of a raw object, as :func:`resource_version`."""
    return resource_version((body.get("metadata") or {}).get("resourceVersion"))


@dataclass(slots=True)
class Section(Generic[_V]):
    """Objects of one kind by (namespace, name), each with the resourceVersion it was seen
    at; deletions leave tombstones until a list newer than them is applied."""

    entries: dict[Key, tuple[int, _V]] = field(default_factory=dict)
    tombstones: dict[Key, int] = field(default_factory=dict)
    #: The resourceVersion of the last list applied, by namespace (None: every namespace).
    listed: dict[str | None, int] = field(default_factory=dict)

    def put(self, key: Key, version: int, value: _V) -> bool:
        """Record ``value`` seen at ``version`` (an ADDED, MODIFIED or listed object);
        False when what is held is newer (the event was stale) and nothing changed.

        An event no newer than the last list of its namespace is stale too when the list
        did not hold the object: it was deleted since (a late event must not bring back
        what a fresh list dropped)."""
        held = self.entries.get(key)
        if held is not None and held[0] > version >= 0:
            return False
        if held is None and 0 <= version <= self._listed(key[0]):
            return False
        gone = self.tombstones.get(key)
        if gone is not None and gone >= version >= 0:
            return False
        self.tombstones.pop(key, None)
        self.entries[key] = (version, value)
        return True

    def delete(self, key: Key, version: int) -> None:
        """Forget ``key``, deleted at ``version`` (the DELETED event's object's)."""
        held = self.entries.get(key)
        if held is None or held[0] <= version or version < 0:
            self.entries.pop(key, None)
        self.tombstones[key] = max(version, self.tombstones.get(key, -1))

    def replace(
        self, listed: Iterable[tuple[Key, int, _V]], list_version: int, *, namespace: str | None
    ) -> None:
        """Make the section what a list at ``list_version`` says, for ``namespace`` (None:
        every namespace): entries the list lacks go, unless an event newer than the list
        brought them; tombstones newer than the list still hide listed objects."""
        fresh: dict[Key, tuple[int, _V]] = {key: (v, value) for key, v, value in listed}
        for key, (version, value) in self.entries.items():
            if namespace is not None and key[0] != namespace:
                fresh[key] = (version, value)  # another namespace's list decides
                continue
            if version > list_version >= 0 and (key not in fresh or fresh[key][0] < version):
                fresh[key] = (version, value)
        for key, version in list(self.tombstones.items()):
            if namespace is not None and key[0] != namespace:
                continue
            if version > list_version >= 0:
                held = fresh.get(key)
                if held is not None and held[0] <= version:
                    del fresh[key]
            else:
                del self.tombstones[key]
        self.entries = fresh
        if list_version >= 0:
            self.listed[namespace] = max(list_version, self.listed.get(namespace, -1))

    def _listed(self, namespace: str) -> int:
        return max(self.listed.get(namespace, -1), self.listed.get(None, -1))

    def values(self) -> list[_V]:
        """Every value held."""
        return [value for _, value in self.entries.values()]

    def get(self, key: Key) -> _V | None:
        """The value held for ``key``, or None."""
        held = self.entries.get(key)
        return held[1] if held is not None else None


@dataclass(slots=True)
class Store:
    """The operator's view: raw LLMRoles, each Secret's decoded role-related keys (but not
    the ``apiKey`` of a client API-key Secret), each Secret as a client API key
    (:data:`ApiKeyEntry`; both sections are fed by the same events and lists), and the
    gateway replicas' Leases.

    ``stale`` is True until a fresh list has been applied, and again whenever a watch lists
    anew (kopf's listing events), which is the sign of a gap in the watch.
    """

    roles: Section[dict[str, Any]] = field(default_factory=Section)
    secrets: Section[dict[str, str]] = field(default_factory=Section)
    api_keys: Section[ApiKeyEntry] = field(default_factory=Section)
    #: The gateway replicas' Leases of the config Secret, each with when its renewal was
    #: seen (``rolegate_operator.gateways``).
    gateways: Section[Seen] = field(default_factory=Section)
    stale: bool = True

    def role_bodies(self) -> list[dict[str, Any]]:
        """Every LLMRole held, raw."""
        return self.roles.values()

    def secret_data(self) -> dict[Key, dict[str, str]]:
        """(namespace, name) -> decoded role-related keys, of every Secret held."""
        return {key: value for key, (_, value) in self.secrets.entries.items()}

    def api_key_list(self) -> tuple[ApiKey, ...]:
        """Every client API key held, sorted by (namespace, name)."""
        keys = [v for v in self.api_keys.values() if isinstance(v, ApiKey)]
        return tuple(sorted(keys, key=lambda k: (k.namespace, k.name)))
