"""The one idempotent reconcile: every LLMRole -> the gateway's config Secret and statuses.

The gateway's config is one Secret holding all its roles and client API keys, so every
change (a role created, edited, deleted or resumed after a restart; a referenced Secret
changed; an API-key Secret created, rotated, unlabelled or deleted) asks for the same thing:
render the whole config from what the operator sees, then write only what differs:

1. the config Secret, when its content differs from the rendered config;
2. each role's status, when it differs from the rendered one (``lastTransitionTime``
   is kept while a condition holds, so an unchanged role renders equal); its
   ``status.gateways`` (and, with ``await_gateways``, its ``Ready``) come from the gateway
   replicas' Leases (:mod:`rolegate_operator.gateways`), which wake a pass only when a
   replica appears or goes or what it serves changes;
3. an Event for each condition that flipped.

A :class:`Reconciler` runs this level-triggered loop over a :class:`~rolegate_operator.store.Store`
that kopf's watch events keep current (handlers only record the event and
:meth:`~Reconciler.wake` it), so event-driven passes read no list. A burst of changes is
batched into one pass, and a failed pass is retried with backoff.

Truth from the API: the first pass, a pass every ``resync_s``, and the pass after a watch
listed anew (kopf's listing events: a restarted API server, a resourceVersion gone with 410)
first *replace* the store from fresh lists of LLMRoles and Secrets. A watch gap can hide a
deletion (kopf's relist never says what went); the fresh list drops it, so a deleted role or
a deleted Secret's key leaves the config within one resync interval at most, and at once in
the usual case where the gap ends with a relist that finds some object (kopf reports listed
objects one by one, never the end of a listing: a relist of nothing goes unseen). The first
pass needs no event either: with no LLMRole and no Secret at all, the empty config is
written once that first list is done.

Status writes carry the role's resourceVersion as a precondition (see
:meth:`~rolegate_operator.apply.Kube.patch_status`), so a status rendered from an older view
never lands. It never writes a role's spec, and never writes anything when nothing changed.

Errors: a spec problem is a False condition on that role, never an exception. API trouble
is retried by the loop with backoff (kopf's TemporaryError/PermanentError retry kopf's own
per-object change handlers, which this operator does not use; see ``main``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import errors, secret_data
from rolegate_gateway.config import ApiKey, GatewayConfig
from rolegate_gateway.kube import API_ERRORS, describe, log_failure, unavailable
from rolegate_operator import backends, objects, passes, render
from rolegate_operator.apply import Kube
from rolegate_operator.gateways import Gateways
from rolegate_operator.objects import api_key_entry, role_object, secret_keys
from rolegate_operator.passes import Pass, TooLarge, Written
from rolegate_operator.settings import Settings
from rolegate_operator.store import ApiKeyEntry, Store, key_of, resource_version, version_of

__all__ = ["STATUS_WRITERS", "Pass", "Reconciler", "api_key_entry", "role_object", "secret_keys"]

log = logging.getLogger(__name__)

#: Status writes (each with its Events) in flight at once in a pass: enough to keep the API
#: server busy (its default --max-mutating-requests-inflight is 200), few enough to leave
#: room for every other client.
STATUS_WRITERS = 16


class Reconciler:
    """Renders the config and statuses from the :class:`Store` and writes what differs.

    kopf's handlers feed it with :meth:`role_event` and :meth:`secret_event`; :meth:`run`
    reconciles until cancelled.
    """

    def __init__(self, settings: Settings, kube: Kube, *, store: Store | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.store = store if store is not None else Store()
        self._wake = asyncio.Event()
        self._instance = socket.gethostname()
        #: (namespace, name) -> the status last written, while the store may lag behind it.
        self._written: dict[tuple[str, str], Written] = {}
        #: (namespace, name) -> (resourceVersion, outcome) of a role whose status was found
        #: right: while both stay, the next pass skips rendering its status (5,000 roles:
        #: ~0.35 s a pass).
        self._settled: dict[tuple[str, str], tuple[str, render.Outcome]] = {}
        #: What the last render resolved of each role, reused while its spec and Secret
        #: stay (5,000 roles, one changed: ~0.5 s less a pass).
        self._memo = render.RenderMemo()
        #: The last pass, and the last error (None after a good pass); for the probe.
        self.last: Pass | None = None
        self.last_error: str | None = None
        #: Fresh lists made (each one list of LLMRoles and one of Secrets per namespace).
        self.lists = 0
        #: The backends of serve: roles: read and written each pass.
        self.backends = backends.BackendSync(kube, release_s=settings.backend_release_s)
        #: The gateway replicas' Leases: status.gateways, and Ready with await_gateways.
        self.gateways = Gateways(self.store, settings)

    def wake(self) -> None:
        """Ask for a reconcile soon (changes within ``debounce_s`` share one pass)."""
        self._wake.set()

    def references(self, namespace: str, name: str) -> bool:
        """True when some role names the Secret ``namespace/name``."""
        key = (namespace, name)
        return any(role_object(body).secret_ref() == key for body in self.store.role_bodies())

    def role_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """Record a watch event of an LLMRole (``kind`` None: listed by a watch that
        started over, so a fresh list is due: it may have missed deletions) and wake."""
        key, version = key_of(body), version_of(body)
        if kind == "DELETED":
            self.store.roles.delete(key, version)
        else:
            self.store.roles.put(key, version, dict(body))
        if kind is None:
            self.store.stale = True
        self.wake()

    def secret_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """Record a watch event of a Secret (only its role-related keys, and the hash of a
        client API key, are kept) and wake when some role references it, when it is the
        config Secret (edited or deleted by hand: put it right), when it is or was a client
        API key (new, rotated, unlabelled, deleted), or when it was listed anew (``kind``
        None: as :meth:`role_event`). A labelled Secret that is no valid key is logged
        (WARNING, without its value) once per change."""
        key, version = key_of(body), version_of(body)
        held = self.store.api_keys.get(key)
        if kind == "DELETED":
            self.store.secrets.delete(key, version)
            self.store.api_keys.delete(key, version)
            entry: ApiKeyEntry = None
        else:
            self.store.secrets.put(key, version, secret_keys(body))
            entry = api_key_entry(body)
            new = objects.new_refusal(self.store, key, version, entry)
            if self.store.api_keys.put(key, version, entry) and new:
                objects.left_out(key, entry)
        if kind is None:
            self.store.stale = True
            self.wake()
        elif (
            key == self.settings.config_secret
            or isinstance(held, ApiKey)
            or isinstance(entry, ApiKey)
            or self.references(*key)
        ):
            self.wake()

    def lease_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """Record a watch event of a gateway Lease; wake only when a replica appeared or
        went or what it serves changed (a mere renewal changes no status)."""
        if self.gateways.event(kind, body):
            self.wake()

    def backend_event(self, namespace: str) -> None:
        """A backend's Deployment, pod or claim in ``namespace`` changed: reconcile (its
        roles' ``BackendReady``; and a backend no role wants is deleted)."""
        self.backends.namespaces.add(namespace)
        self.wake()

    async def refresh(self) -> float:
        """Replace the store from fresh lists of LLMRoles and Secrets in the namespaces
        served (all: one cluster-wide list each) and of the gateway Leases; returns the
        seconds it took.

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble; the store
                stays stale, so the next pass lists again.
        """
        started = time.monotonic()
        self.store.stale = False  # a listing event from now on asks for another list
        try:
            for namespace in self.settings.namespaces or (None,):
                roles, roles_version = await self.kube.list_roles(namespace)
                secrets, secrets_version = await self.kube.list_secrets(namespace)
                self.store.roles.replace(
                    ((key_of(b), version_of(b), b) for b in roles),
                    resource_version(roles_version),
                    namespace=namespace,
                )
                self.store.secrets.replace(
                    ((key_of(b), version_of(b), secret_keys(b)) for b in secrets),
                    resource_version(secrets_version),
                    namespace=namespace,
                )
                self.store.api_keys.replace(
                    objects.api_keys_listed(self.store, secrets),
                    resource_version(secrets_version),
                    namespace=namespace,
                )
            await self.gateways.refresh(self.kube)
        except BaseException:
            self.store.stale = True
            raise
        self.lists += 1
        return time.monotonic() - started

    async def reconcile(self, *, fresh: bool = False) -> Pass:
        """One pass: render everything from the store (replaced from fresh lists first
        when ``fresh``), write what differs.

        A failed config write does not stop the statuses: roles that would be served say
        ``Ready=Unknown, ConfigNotWritten``. A failed status write does not stop the other
        roles'. The first such error is raised at the end, so the loop retries.

        Raises:
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble; nothing
                is lost, the next pass starts over from a fresh read.
        """
        started = time.monotonic()
        list_s = await self.refresh() if fresh else None
        objects = [role_object(body) for body in self.store.role_bodies()]
        ns, name = self.settings.config_secret
        failures: list[Exception] = []
        live = None
        try:  # before rendering: BackendReady comes from it
            live = await self.backends.read(objects)
        except API_ERRORS as exc:  # the config and the statuses still go on
            log.warning("cannot read the backends: %s", describe(exc))
            failures.append(exc)
        serving = any(o.spec.get("serve") is not None for o in objects) or bool(live)
        served = await self._served(ns, name) if serving else (True, None)
        rendered = render.render(
            objects,
            self.store.secret_data(),
            config_secret=self.settings.config_secret_ref,
            api_keys=self.store.api_key_list(),
            backends=backends.states(live, self.backends.refused) if live is not None else None,
            previous=served[1],
            memo=self._memo,
        )
        try:
            if live is not None:
                await self.backends.write(
                    rendered.backends,
                    live,
                    retained=rendered.retained,
                    served=(served[1] or GatewayConfig()) if served[0] else None,
                )
        except API_ERRORS as exc:
            log.warning("cannot apply the backends: %s", describe(exc))
            failures.append(exc)
        not_written: render.Check | None = None
        try:
            wrote = await self._write_config(rendered, ns, name)
        except TooLarge as exc:  # not retried: only a change of the roles can help
            not_written, wrote = exc.check, False
        except API_ERRORS as exc:
            failures.append(exc)
            not_written = passes.not_written(exc, ns, name)
            wrote = False
        todo = []
        for outcome in self.gateways.judge(rendered.outcomes, config_hash=rendered.config.hash):
            if live is None and outcome.backend:
                continue  # its BackendReady is not known this pass: its status stays
            if not_written is not None and outcome.config is not None:
                outcome = dataclasses.replace(outcome, ready=not_written)
            todo.append(outcome)
        done = await self._statuses(todo, passes.now())
        failures.extend(r for r in done if isinstance(r, Exception))
        posted = [r for r in done if isinstance(r, int)]
        statuses, events = len(posted), sum(posted)
        present = {(o.namespace, o.name) for o in objects}
        self._written = {k: v for k, v in self._written.items() if k in present}
        self._settled = {k: v for k, v in self._settled.items() if k in present}
        if failures:
            raise failures[0]
        return Pass(
            roles=len(objects),
            served=len(rendered.config.roles),
            config_hash=rendered.config.hash,
            wrote_config=wrote,
            statuses_written=statuses,
            events_posted=events,
            list_s=list_s,
            took_s=time.monotonic() - started,
        )

    async def _served(self, namespace: str, name: str) -> tuple[bool, GatewayConfig | None]:
        """(read, the config the gateway serves now: the config Secret's). A rollout between
        backends holds on to what it names, and no backend it names is deleted. (True, None):
        there is no such Secret yet; (False, None): it could not be read or parsed."""
        try:
            current = await self.kube.read_secret(namespace, name)
            if current is None:
                return True, None
            data = current.get("data") or {}
            return True, GatewayConfig.from_wire(secret_data.decode(data))
        except (*API_ERRORS, ValueError, errors.ConfigError) as exc:
            log.warning("the served config is not readable: %s", describe(exc))
            return False, None

    async def _statuses(
        self, outcomes: list[render.Outcome], now: str
    ) -> list[int | Exception | None]:
        """:meth:`_status` of each outcome, up to :data:`STATUS_WRITERS` at once (one after
        the other, 5,000 new roles took minutes: three API calls each); per outcome not
        :meth:`_unchanged`, its result, or the API error that stopped it (logged). A bug
        raises."""
        gate = asyncio.Semaphore(STATUS_WRITERS)
        # No task for a role whose status was right last pass and still is (5,000 such: 0.3 s).
        changed = [o for o in outcomes if not self._unchanged(o)]

        async def one(outcome: render.Outcome) -> int | Exception | None:
            async with gate:
                try:
                    return await self._status(outcome, now)
                except API_ERRORS as exc:
                    log.warning(
                        "cannot write the status of %s: %s", outcome.role.ref, describe(exc)
                    )
                    return exc

        return list(await asyncio.gather(*(one(o) for o in changed)))

    def _unchanged(self, outcome: render.Outcome) -> bool:
        """The role's status was found right for this very view and outcome last pass (and
        this operator wrote nothing newer since): it still is."""
        role = outcome.role
        key = (role.namespace, role.name)
        mine = self._written.get(key)
        if mine is not None and mine.uid == role.uid and role.resource_version in mine.behind:
            return False
        return self._settled.get(key) == (role.resource_version, outcome)

    async def _status(self, outcome: render.Outcome, now: str) -> int | None:
        """Write one role's status if it differs, and an Event per condition that changed.

        Returns None when nothing was written (unchanged, or refused because the role
        changed or was re-created since this view of it), else the number of Events posted.
        """
        role = outcome.role
        key = (role.namespace, role.name)
        # What this operator last wrote is newer than a view that has not caught up yet.
        mine = self._written.get(key)
        behind = mine is not None and mine.uid == role.uid and role.resource_version in mine.behind
        current = mine.status if mine is not None and behind else role.status
        version = mine.version if mine is not None and behind else role.resource_version
        desired = render.desired_status(outcome, now=passes.seconds(now), previous=current)
        if desired == current:
            if not behind:
                self._settled[key] = (role.resource_version, outcome)
            return None
        self._settled.pop(key, None)
        # A merge patch keeps what it does not name: a field the role no longer has (its
        # gateways' counts, once out of the config) is removed with null.
        gone = dict.fromkeys(k for k in current if k not in desired)
        written = await self.kube.patch_status(
            role.namespace, role.name, resource_version=version, status={**gone, **desired}
        )
        if written is None:  # changed, re-created or gone meanwhile: its event wakes a pass
            self._written.pop(key, None)
            log.debug("status of role %s not written: the role changed meanwhile", role.ref)
            return None
        superseded = (mine.behind | {mine.version}) if mine is not None and behind else None
        self._written[key] = Written(
            uid=role.uid,
            behind=superseded or frozenset({role.resource_version}),
            version=written,
            status=desired,
        )
        log.info("wrote the status of role %s", role.ref, extra={"role": role.ref})
        events = 0
        for change in render.transitions(current, desired):
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
        config; True when written.

        Raises:
            TooLarge: more than a Secret holds; nothing written.
            ApiException, aiohttp.ClientError, OSError, TimeoutError: API trouble.
        """
        owner = None
        if self.settings.config_owner is not None:
            uid = await self.kube.service_account_uid(ns, self.settings.config_owner)
            if uid is None:
                log.warning(
                    "ServiceAccount %s/%s (the config Secret's owner) not found: the Secret "
                    "is written without an owner",
                    ns,
                    self.settings.config_owner,
                )
            else:
                owner = (self.settings.config_owner, uid)
        body = render.config_secret(rendered.config, namespace=ns, name=name, owner=owner)
        too_large = render.oversize(body, roles=len(rendered.config.roles))
        if too_large is not None:
            log.error("gateway config %s/%s not written: %s", ns, name, too_large.message)
            raise TooLarge(too_large)
        current = await self.kube.read_secret(ns, name)
        if current is not None and objects.same_config(current, body):
            return False
        await self.kube.write_secret(body, current=current)
        log.info(
            "wrote gateway config %s/%s: %d roles, %d API keys, hash %s",
            ns,
            name,
            len(rendered.config.roles),
            len(rendered.config.api_keys),
            rendered.config.hash,
            extra={"config_hash": rendered.config.hash},
        )
        return True

    async def run(self) -> None:
        """Reconcile on every wake-up, until cancelled; the first pass, one every
        ``resync_s`` (even while events keep coming) and one after a watch listed anew
        read fresh lists first. When the namespaces served leave out the config Secret's,
        kopf delivers no gateway Lease event: they are polled meanwhile
        (:meth:`Gateways.poll`).

        A failed pass is retried after a backoff: from ``retry_delay_s``, doubling up to
        ``max_retry_delay_s``, or up to ``max_unavailable_delay_s`` while the API server is
        unreachable or unavailable, a wait that a wake-up (the watch is back) cuts short
        when the connection was lost (not when the server answered 429 or 5xx).
        """
        if self.gateways.watched(self.settings.namespaces):
            await self._loop()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self.gateways.poll(self.kube, self.wake), name="rolegate-leases")
            await self._loop()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s = self.settings.retry_delay_s
        next_list = loop.time()  # the first pass lists
        while True:
            try:
                due = min(
                    next_list, self.backends.due() or math.inf, self.gateways.due() or math.inf
                )
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, due - loop.time()))
                await asyncio.sleep(self.settings.debounce_s)
            except TimeoutError:
                backend = self.backends.due() or math.inf
                if loop.time() < min(next_list, backend) and not self.gateways.expired():
                    continue  # the gateway Lease that was due was renewed meanwhile
            self._wake.clear()
            fresh = self.store.stale or loop.time() >= next_list
            try:
                self.last = await self.reconcile(fresh=fresh)
            except Exception as exc:  # a bug must not stop reconciling for good
                short = unavailable(exc)
                if short:
                    delay_s = min(delay_s, self.settings.max_unavailable_delay_s)
                self.last_error = f"{type(exc).__name__}: {describe(exc)}"
                log_failure(log, exc, "reconcile failed, retrying in %.1f s: %s", delay_s)
                # A wake-up (a watch event: the server is back) cuts the wait short only after
                # a lost connection; a server answering 429/5xx is busy, and the operator's
                # own status writes would wake it every debounce interval.
                answered = isinstance(exc, ApiException) and bool(exc.status)
                await self._backoff(delay_s, wakeable=short and not answered)
                cap_s = (
                    self.settings.max_unavailable_delay_s
                    if short
                    else self.settings.max_retry_delay_s
                )
                delay_s = min(delay_s * 2, cap_s)
                self._wake.set()
                continue
            if fresh:
                next_list = loop.time() + self.settings.resync_s
            self.last_error = None
            delay_s = self.settings.retry_delay_s
            log.debug("reconciled: %s", self.last)

    async def _backoff(self, delay_s: float, *, wakeable: bool) -> None:
        """Sleep ``delay_s`` seconds; with ``wakeable``, a wake-up ends the sleep early."""
        if not wakeable:
            await asyncio.sleep(delay_s)
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay_s)
