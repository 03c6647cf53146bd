"""The one idempotent reconcile: every LLMRole -> the gateway's config Secret and statuses.

The gateway's config is one Secret holding all its roles, so every change (a role created,
edited, deleted or resumed after a restart; a referenced Secret changed) asks for the same
thing: render the whole config from what the operator sees, then write only what differs:

1. the config Secret, when its content differs from the rendered config;
2. each role's status, when it differs from the rendered one (``lastTransitionTime``
   is kept while a condition holds, so an unchanged role renders equal);
3. an Event for each condition that flipped.

A :class:`Reconciler` runs this level-triggered loop: handlers only :meth:`~Reconciler.wake`
it, a burst of changes is batched into one pass, a failed pass is retried with backoff, and
a pass every ``resync_s`` repairs edits made behind the operator's back. It never writes a
role's spec, and never writes anything when nothing changed.

Errors: a spec problem is a False condition on that role, never an exception. API trouble
is retried by the loop with backoff (kopf's TemporaryError/PermanentError retry kopf's own
per-object change handlers, which this operator does not use; see ``main``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rolegate_gateway.api import ConditionStatus
from rolegate_gateway.kube import API_ERRORS, CONFIG_KEY, describe, log_failure
from rolegate_gateway.roles import SECRET_KEYS
from rolegate_operator import render
from rolegate_operator.apply import Kube
from rolegate_operator.settings import Settings

__all__ = ["Pass", "Reconciler", "role_object", "secret_keys"]

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
    )


def secret_keys(body: Mapping[str, Any]) -> dict[str, str]:
    """The role-related keys of a raw Secret, decoded (``data`` is base64, per the API).

    Keys that are not valid base64 UTF-8 are left out (the role then reports KeyMissing).
    """
    out = {}
    for key, value in (body.get("data") or {}).items():
        if key in SECRET_KEYS:
            try:
                out[key] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, TypeError):
                continue
    return out


@dataclass(frozen=True, slots=True)
class Pass:
    """What one reconcile did."""

    roles: int
    served: int
    config_hash: str
    wrote_config: bool
    statuses_written: int
    events_posted: int


def _not_written(exc: BaseException, namespace: str, name: str) -> render.Check:
    message = f"the gateway config Secret {namespace}/{name} could not be written: {describe(exc)}"
    return render.Check(ConditionStatus.UNKNOWN, "ConfigNotWritten", message)


def _now() -> str:
    """RFC 3339 in UTC with microseconds (a metav1.MicroTime): 2026-11-21T10:00:00.123456Z."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(stamp: str) -> str:
    """A MicroTime to whole seconds, as metav1.Time is written (2026-11-21T10:00:00Z)."""
    return stamp.split(".")[0] + "Z"


class Reconciler:
    """Renders the config and statuses from two live views and writes what differs.

    ``roles`` and ``secrets`` are called for snapshots of what the operator sees (kopf's
    indices): raw LLMRoles, and (namespace, name) -> decoded Secret keys.
    """

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        *,
        roles: Callable[[], Iterable[Mapping[str, Any]]],
        secrets: Callable[[], Mapping[render.SecretKey, Mapping[str, str]]],
    ) -> None:
        self.settings = settings
        self.kube = kube
        self._roles = roles
        self._secrets = secrets
        self._wake = asyncio.Event()
        self._indexed = False
        self._instance = socket.gethostname()
        #: (namespace, name) -> (uid, status) as last written or confirmed.
        self._written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        #: The last pass, and the last error (None after a good pass); for the probe.
        self.last: Pass | None = None
        self.last_error: str | None = None

    def indexed(self) -> None:
        """Say that kopf's indices hold every object (any handler call means so); timed
        passes wait for it, so a slow first listing never renders a partial config."""
        self._indexed = True

    def wake(self) -> None:
        """Ask for a reconcile soon (changes within ``debounce_s`` share one pass)."""
        self._indexed = True
        self._wake.set()

    def references(self, namespace: str, name: str) -> bool:
        """True when some role names the Secret ``namespace/name``."""
        key = (namespace, name)
        return any(role_object(body).secret_ref() == key for body in self._roles())

    async def reconcile(self) -> Pass:
        """One pass: render everything, write what differs.

        A failed config write does not stop the statuses: roles that would be served say
        ``Ready=Unknown, ConfigNotWritten``. A failed status write does not stop the other
        roles'. The first such error is raised at the end, so the loop retries.

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble; nothing
                is lost, the next pass starts over from a fresh read.
        """
        objects = [role_object(body) for body in self._roles()]
        ns, name = self.settings.config_secret
        rendered = render.render(
            objects, self._secrets(), config_secret=self.settings.config_secret_ref
        )
        failures: list[Exception] = []
        not_written: render.Check | None = None
        try:
            wrote = await self._write_config(rendered, ns, name)
        except API_ERRORS as exc:
            failures.append(exc)
            not_written = _not_written(exc, ns, name)
            wrote = False
        now = _now()
        statuses = events = 0
        for outcome in rendered.outcomes:
            if not_written is not None and outcome.config is not None:
                outcome = dataclasses.replace(outcome, ready=not_written)
            try:
                posted = await self._status(outcome, now)
            except API_ERRORS as exc:
                log.warning("cannot write the status of %s: %s", outcome.role.ref, describe(exc))
                failures.append(exc)
                continue
            if posted is not None:
                statuses += 1
                events += posted
        live = {(o.namespace, o.name) for o in objects}
        self._written = {k: v for k, v in self._written.items() if k in live}
        if failures:
            raise failures[0]
        return Pass(
            roles=len(objects),
            served=len(rendered.config.roles),
            config_hash=rendered.config.hash,
            wrote_config=wrote,
            statuses_written=statuses,
            events_posted=events,
        )

    async def _status(self, outcome: render.Outcome, now: str) -> int | None:
        """Write one role's status if it differs, and an Event per condition that changed.

        Returns None when nothing was written, else the number of Events posted.
        """
        role = outcome.role
        key = (role.namespace, role.name)
        # What this operator last wrote is newer than a watch that has not caught up.
        mine = self._written.get(key)
        previous = mine[1] if mine and mine[0] == role.uid else role.status
        desired = render.desired_status(outcome, now=_seconds(now), previous=previous)
        if desired == role.status:
            self._written[key] = (role.uid, desired)
            return None
        if not await self.kube.patch_status(role.namespace, role.name, role.uid, desired):
            return None  # gone meanwhile
        self._written[key] = (role.uid, desired)
        log.info("wrote the status of role %s", role.ref, extra={"role": role.ref})
        events = 0
        for change in render.transitions(previous, desired):
            body = render.event(role, change, now=now, instance=self._instance)
            events += await self._post(body)
            log.info(
                "role %s: %s=%s (%s)",
                role.ref,
                change.condition,
                change.status,
                change.reason,
                extra={"role": role.ref, "reason": change.reason},
            )
        return events

    async def _post(self, body: dict[str, Any]) -> int:
        """Post an Event; 1 when posted. Events are best effort: a failure is logged only."""
        try:
            await self.kube.post_event(body)
        except API_ERRORS as exc:
            log.warning("cannot post an Event: %s", describe(exc))
            return 0
        return 1

    async def _write_config(self, rendered: render.Rendered, ns: str, name: str) -> bool:
        """Write the config Secret ``ns/name`` unless it already holds ``rendered``'s
        config; True when written."""
        body = render.config_secret(rendered.config, namespace=ns, name=name)
        current = await self.kube.read_secret(ns, name)
        if current is not None and _same(current, body):
            return False
        await self.kube.write_secret(body, current=current)
        log.info(
            "wrote gateway config %s/%s: %d roles, hash %s",
            ns,
            name,
            len(rendered.config.roles),
            rendered.config.hash,
            extra={"config_hash": rendered.config.hash},
        )
        return True

    async def run(self) -> None:
        """Reconcile on every wake-up and every ``resync_s``, until cancelled.

        No pass runs before kopf's indices hold every object (see :meth:`indexed`), so a
        restarted operator never writes a partial config.
        """
        delay_s = self.settings.retry_delay_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.resync_s)
                await asyncio.sleep(self.settings.debounce_s)
            except TimeoutError:
                if not self._indexed:
                    continue
            self._wake.clear()
            try:
                self.last = await self.reconcile()
            except Exception as exc:  # a bug must not stop reconciling for good
                self.last_error = f"{type(exc).__name__}: {describe(exc)}"
                log_failure(log, exc, "reconcile failed, retrying in %.1f s: %s", delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.settings.max_retry_delay_s)
                self._wake.set()
                continue
            self.last_error = None
            delay_s = self.settings.retry_delay_s
            log.debug("reconciled: %s", self.last)


def _same(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """The live config Secret already holds ``body``'s config, labels and annotations."""
    data = current.get("data") or {}
    meta, want = current.get("metadata") or {}, body["metadata"]
    return (
        data.get(CONFIG_KEY) == body["data"][CONFIG_KEY]
        and len(data) == 1
        and all((meta.get("labels") or {}).get(k) == v for k, v in want["labels"].items())
        and all((meta.get("annotations") or {}).get(k) == v for k, v in want["annotations"].items())
    )
