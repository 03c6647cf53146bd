"""The compact per-role upstream health a gateway replica publishes in its Lease. Pure.

Owns the annotation ``rolegate.dev/upstream`` (:data:`UPSTREAM_ANNOTATION`): written by
``rolegate_gateway.presence`` from the checker's verdicts (``rolegate_gateway.health``),
read by the operator (``rolegate_operator.render.upstream``: each role's ``UpstreamReady``).

A Lease's annotations hold 256 KiB in all, the role hashes take up to 200 KiB
(``rolegate_gateway.leases``), and there may be 10,000 roles; so roles are grouped by
(state, message), since the roles of one upstream share a message, and the largest group
(Reachable when that is as large: the usual case) is the ``default``, which names no role.
A Reachable verdict is published without its message (``""``, whatever the checker said):
all healthy roles are then one group, however many upstreams and models they use.
Compact JSON::

    {"n": 120, "default": ["Reachable", ""],
     "groups": [["ModelNotServed", "model 'x' is not served at …", ["r1", "r2"]],
                ["NotChecked", "not checked yet", ["r3"]]], "more": 0}

``n``: the roles judged (every role the replica serves); a role it serves that no group
names has the default's state. So 10,000 healthy roles cost a few bytes, and so do 10,000
roles whose one upstream is down (the default is then that failure and the healthy ones are
named). Bound: :data:`MAX_UPSTREAM_BYTES`. Over it, messages are cut to
:data:`SHORT_MESSAGE_CHARS`, then groups are dropped, those that cost the most bytes per
role first (small groups with long messages: so that, near enough, as many roles as fit stay
named), and ``more`` counts their roles: a reader cannot tell those roles' state and says
Unknown for every role the Lease does not name (:meth:`UpstreamReport.verdict` returns
None). No timestamps: the annotation changes only
when some role's state or message does, so the operator wakes only then.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from rolegate_gateway.probes import State

__all__ = [
    "MAX_UPSTREAM_BYTES",
    "SHORT_MESSAGE_CHARS",
    "UPSTREAM_ANNOTATION",
    "UpstreamReport",
    "encode",
]

#: The annotation of a gateway Lease holding its roles' upstream health (JSON, above).
UPSTREAM_ANNOTATION: Final = "rolegate.dev/upstream"
#: Bytes of the annotation's JSON at most; with the role hashes' 200 KiB it stays under
#: the 256 KiB all annotations may hold.
MAX_UPSTREAM_BYTES: Final = 40 * 1024
#: Characters a group's message is cut to when the whole is over the bound.
SHORT_MESSAGE_CHARS: Final = 160


def _dump(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def encode(verdicts: Mapping[str, tuple[str, str]], *, limit: int = MAX_UPSTREAM_BYTES) -> str:
    """The annotation for ``verdicts`` (role -> (state, message)) within ``limit`` bytes
    (UTF-8); a Reachable verdict's message is dropped (see the module docstring)."""
    reachable = (str(State.REACHABLE), "")
    by: dict[tuple[str, str], list[str]] = {}
    for role, (state, message) in sorted(verdicts.items()):
        kind = reachable if state == reachable[0] else (state, message)
        by.setdefault(kind, []).append(role)
    default = max(by, key=lambda g: (len(by[g]), g == reachable), default=reachable)
    named = [[s, m, roles] for (s, m), roles in by.items() if (s, m) != default]
    named.sort(key=lambda g: len(g[2]))
    head = {"n": len(verdicts), "default": list(default)}
    text = _dump({**head, "groups": named, "more": 0})
    if len(text.encode()) <= limit:
        return text
    for group in named:
        message = str(group[1])
        if len(message) > SHORT_MESSAGE_CHARS:
            group[1] = message[: SHORT_MESSAGE_CHARS - 1] + "…"
    # Each group's size is known alone, so groups are dropped in one pass, not re-encoded;
    # the costliest per role named go first, so the most roles stay named for the bytes.
    sized = sorted(
        ((len(_dump(group).encode()) + 1, group) for group in named),  # +1: the comma
        key=lambda s: s[0] / len(s[1][2]),
    )
    frame = len(_dump({**head, "groups": [], "more": len(verdicts)}).encode())
    total, more = frame + sum(size for size, _ in sized), 0
    while sized and total > limit:
        size, group = sized.pop()
        total -= size
        more += len(group[2])
    kept = [group for _, group in sized]
    kept.sort(key=lambda g: len(g[2]))
    return _dump({**head, "groups": kept, "more": more})


@dataclass(frozen=True, slots=True)
class UpstreamReport:
    """A Lease's upstream annotation, read: per role named, (state, message); ``more``:
    roles left out for the bound (their state is not known)."""

    judged: int = 0
    named: Mapping[str, tuple[State, str]] = field(default_factory=dict)
    more: int = 0
    default: tuple[State, str] = (State.REACHABLE, "")

    def verdict(self, role: str) -> tuple[State, str] | None:
        """(state, message) of ``role``, a role the replica serves; None when the Lease left
        it out for the bound (``more`` > 0 and not named)."""
        found = self.named.get(role)
        if found is not None:
            return found
        if self.more:
            return None
        return self.default

    @classmethod
    def decode(cls, raw: str | None) -> UpstreamReport | None:
        """Read the annotation leniently; None when absent or unreadable (the replica does
        not check upstreams)."""
        if not raw:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        named: dict[str, tuple[State, str]] = {}
        for group in _groups(doc.get("groups")):
            state, message, roles = group
            for role in roles:
                named[role] = (state, message)
        default: tuple[State, str] = (State.REACHABLE, "")
        raw_default = doc.get("default")
        if isinstance(raw_default, list) and len(raw_default) == 2:
            found = next(iter(_groups([[*raw_default, []]])), None)
            if found is not None:
                default = found[0], found[1]
        return cls(
            judged=_int(doc.get("n")), named=named, more=_int(doc.get("more")), default=default
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _groups(raw: object) -> Iterable[tuple[State, str, list[str]]]:
    if not isinstance(raw, list):
        return
    for group in raw:
        if not (isinstance(group, list) and len(group) == 3):
            continue
        state, message, roles = group
        try:
            kind = State(state)
        except ValueError:
            kind = State.NOT_CHECKED  # a state a newer gateway knows: not judged here
        if isinstance(message, str) and isinstance(roles, list):
            yield kind, message, [r for r in roles if isinstance(r, str)]
