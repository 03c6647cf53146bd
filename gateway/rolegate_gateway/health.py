"""The upstream health checker: is each role's model really served at its upstream?

Owns :class:`HealthChecker`: every ``interval_s`` seconds (jittered by ±20 %, so
replicas and restarts spread out), one round probes every *distinct* upstream of the live
roles (:mod:`rolegate_gateway.probes`: which GET per binding, and how its answer is
judged) and judges each role against the answer. Each config the runtime applies starts a
round of its new and changed roles at once, beside a periodic round that may still be
waiting on a slow upstream (which does not hold up a new role's verdict).

- Dedupe: roles whose probes have the same key (URL, digest of the credential headers)
  share one GET per round: 100 roles on one upstream and key cost one request per
  interval; the model list it returns is judged per role.
- Bounds: at most ``concurrency`` probes at once, each within ``timeout_s`` seconds
  (connect, answer and a body of at most :data:`MAX_LIST_BYTES`); a probe that hangs is
  cut there and judged Unreachable, the others go on. Probes never touch the request
  path: they run in their own task, hold no role slot, and share the app's client session
  (its connection pool per host) with the role's calls; redirects are not followed.
- A role whose upstream changed (a rebind, a rotated key) is NotChecked ("not checked
  since its config changed") until the round that the change starts at once.
- Periodic rounds run one at a time; each config's round of new roles runs at once, beside
  any other round (a role added during a periodic round can be probed by both, once).
- Verdicts never hold a credential: the URL shown has no userinfo or query, the
  upstream's error text (at most :data:`MAX_ERROR_BYTES` of a non-2xx body are read) is
  scrubbed of the role's credentials by the role's own scrubber (built, and compiled on
  its first error, once per upstream config: :mod:`rolegate_gateway.scrub`).
- A probe that fails in a way not foreseen (a bug, an odd body) makes its roles
  Unreachable ("the check failed: <exception type>") and is logged; the round goes on.

Published in ``/status`` (each role's ``upstream``: ``state``, ``checkedAt``,
``message``), as metrics (``rolegate_upstream_up{role,namespace,binding,model}`` 1/0, none
while NotChecked; ``rolegate_upstream_check_duration_seconds{binding,outcome}``, whose
``_count`` is the probes made) and in this replica's Lease (``rolegate_gateway.presence``,
:mod:`rolegate_gateway.upstream_report`; a Reachable verdict's message is not published
there, so all healthy roles are one group): :attr:`HealthChecker.listeners` are called
when some role's state or message changed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import Histogram
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rolegate_gateway.config import GatewayConfig, RoleConfig, Upstream
from rolegate_gateway.keys import RUNTIME, SESSION
from rolegate_gateway.metrics import ROLE_LABELS, role_labels
from rolegate_gateway.presence import PRESENCE
from rolegate_gateway.probes import Answer, Probe, State, Verdict, judge, probe_for, served_models
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.scrub import Scrubber
from rolegate_gateway.translators.upstream_errors import json_object
from rolegate_gateway.upstream import read_capped

__all__ = [
    "HEALTH",
    "MAX_ERROR_BYTES",
    "MAX_LIST_BYTES",
    "HealthChecker",
    "health_ctx",
    "status_entries",
]

log = logging.getLogger(__name__)

#: Bytes of a model list read at most (OpenAI's is ~10 KB; a vLLM or Ollama server's less).
MAX_LIST_BYTES: Final = 4 * 1024 * 1024
#: Bytes of a non-2xx body read at most: only :data:`_DETAIL_CHARS` of its message are
#: kept, so reading (and scrubbing) more is waste.
MAX_ERROR_BYTES: Final = 64 * 1024
#: Characters of an upstream's error text quoted in a verdict.
_DETAIL_CHARS: Final = 200
_NOT_YET: Final = "not checked yet"
_CHANGED: Final = "not checked since its config changed"
_BEDROCK: Final = (
    "bedrock is not checked: its cheap signed call (GetFoundationModel) needs an IAM "
    "permission that invoke-only roles lack, and inference profiles are not model ids"
)
#: Roles judged between two yields to the event loop (~5 ms of work at most).
_SLICE: Final = 500
_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class HealthChecker:
    """Checks the upstreams of ``runtime``'s roles (see the module docstring).

    Not thread-safe: the event loop's thread only.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float = 30.0,
        timeout_s: float = 5.0,
        concurrency: int = 8,
    ) -> None:
        """``interval_s``: seconds between rounds (jittered ±20 %); ``timeout_s``: seconds
        one probe may take in all; ``concurrency``: probes in flight at most.

        Raises:
            ValueError: a bound that is not positive.
        """
        if interval_s <= 0 or timeout_s <= 0 or concurrency < 1:
            raise ValueError("interval, timeout and concurrency must be positive")
        self.runtime = runtime
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._gate = asyncio.Semaphore(concurrency)
        #: Role name -> its verdict, for the roles the runtime serves.
        self.verdicts: dict[str, Verdict] = {}
        self._judged: dict[str, Upstream] = {}  # role -> the upstream its verdict is about
        #: role -> (its upstream, its probe, the probe's key): made once per upstream
        self._probes: dict[str, tuple[Upstream, Probe | None, tuple[str, str] | None]] = {}
        #: Called (no arguments) when some role's state or message changed.
        self.listeners: list[Callable[[], None]] = []
        self._kick = asyncio.Event()
        #: Roles added or whose upstream changed since the last round of new roles took them.
        self._fresh: set[str] = set()
        #: Probes made and rounds run since start: for /status and tests.
        self.probes = 0
        self.rounds = 0
        self.duration = Histogram(
            "rolegate_upstream_check_duration_seconds",
            "Seconds one upstream health probe took (one per distinct upstream and "
            "credentials per round), by outcome (the state it gave).",
            ("binding", "outcome"),
            buckets=_BUCKETS,
            registry=runtime.registry,
        )
        self._collector = _UpCollector(self)
        runtime.registry.register(self._collector)
        if runtime.config is not None:
            self.config_applied(runtime.config)

    # -- state ----------------------------------------------------------------------------

    def config_applied(self, config: GatewayConfig) -> None:
        """A runtime listener: forget removed roles, mark new or changed upstreams
        NotChecked, and start a round now."""
        roles = self.runtime.roles
        before = self.published()
        for held in (self.verdicts, self._judged, self._probes):
            for name in [n for n in held if n not in roles]:
                del held[name]
        for name, role in roles.items():
            if self._judged.get(name) != role.config.upstream:
                self._judged[name] = role.config.upstream
                message = _NOT_YET if name not in self.verdicts else _CHANGED
                self.verdicts[name] = Verdict(State.NOT_CHECKED, message)
                self._fresh.add(name)
        self._fresh.intersection_update(roles)
        if self._fresh:
            self._kick.set()
        if self.published() != before:
            self._changed()

    def published(self) -> dict[str, tuple[str, str]]:
        """Role -> (state, message): what this replica's Lease reports. A Reachable
        verdict's message (which names the URL and model) is left out, ``""``: the operator
        does not show it, and it would split the healthy roles into one named group per
        upstream and model (``/status`` has it)."""
        return {
            name: (str(v.state), "" if v.state is State.REACHABLE else v.message)
            for name, v in self.verdicts.items()
        }

    def entry(self, role: str) -> dict[str, Any]:
        """The ``upstream`` entry of ``role`` in /status (camelCase)."""
        verdict = self.verdicts.get(role, Verdict(State.NOT_CHECKED, _NOT_YET))
        return {
            "state": str(verdict.state),
            "checkedAt": verdict.checked_at,
            "message": verdict.message,
        }

    def status(self) -> dict[str, Any]:
        """The checker's own /status entry."""
        return {
            "intervalSeconds": self.interval_s,
            "timeoutSeconds": self.timeout_s,
            "rounds": self.rounds,
            "probes": self.probes,
        }

    def _changed(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop the checks
                log.exception("an upstream health listener failed")

    # -- rounds ---------------------------------------------------------------------------

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Until cancelled: a round of every role each interval, and a round of the new and
        changed roles at each config applied (the first config's: every role)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._periodic(session))
            group.create_task(self._on_change(session, group))

    async def _periodic(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(0.8, 1.2))
            await self._round(session, None)

    async def _on_change(self, session: aiohttp.ClientSession, group: asyncio.TaskGroup) -> None:
        while True:  # a round of its own for each change: none waits on an earlier one
            await self._kick.wait()
            self._kick.clear()
            fresh, self._fresh = self._fresh, set()
            group.create_task(self._round(session, fresh))

    async def _round(self, session: aiohttp.ClientSession, only: set[str] | None) -> None:
        try:
            await self.check(session, only=only)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not end the checks for good
            log.exception("an upstream health round failed")

    async def check(
        self, session: aiohttp.ClientSession, *, only: Collection[str] | None = None
    ) -> None:
        """One round: one probe per distinct key, for every role (``only``: for the roles it
        names); the roles of each key are judged against its answer as soon as it comes (a
        slow probe holds up no other upstream's verdicts)."""
        groups: dict[tuple[str, str], tuple[Probe, Scrubber, list[RoleConfig]]] = {}
        at = _now()
        unchecked: list[tuple[RoleConfig, Verdict]] = []
        names = list(self.runtime.roles) if only is None else sorted(only)
        for i, name in enumerate(names):
            if i and not i % _SLICE:
                await asyncio.sleep(0)  # requests run between slices
            # a role removed meanwhile is neither probed nor remembered (its probe holds
            # its credentials)
            role = self.runtime.roles.get(name)
            if role is None:
                continue
            cached = self._probes.get(name)
            if cached is None or cached[0] is not role.config.upstream:
                made = probe_for(role.config.upstream)
                cached = role.config.upstream, made, made.key if made else None
                self._probes[name] = cached
            _, probe, key = cached
            if probe is None or key is None:
                unchecked.append((role.config, Verdict(State.NOT_CHECKED, _BEDROCK, at)))
                continue
            # the role's own scrubber: built once per upstream config, compiled on its
            # first error body, shared with its calls
            scrubber = role.wrapper.scrubber
            groups.setdefault(key, (probe, scrubber, []))[2].append(role.config)
        self._store(unchecked)
        await asyncio.gather(*(self._group(session, *group) for group in groups.values()))
        self.rounds += 1

    async def _group(
        self,
        session: aiohttp.ClientSession,
        probe: Probe,
        scrubber: Scrubber,
        roles: list[RoleConfig],
    ) -> None:
        """Probe once for ``roles`` (one key), judge each and store the verdicts; never
        raises but for cancellation (a failure not foreseen makes ``roles`` Unreachable)."""
        try:
            answer = await self._probe(session, probe, scrubber, roles[0])
            at = _now()
            for start in range(0, len(roles), _SLICE):  # requests run between slices
                if start:
                    await asyncio.sleep(0)
                chunk = roles[start : start + _SLICE]
                self._store([(rc, judge(rc.upstream, probe, answer, at=at)) for rc in chunk])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or odd answer must not fail the round
            # the type only, here and in the log: an exception's text may quote a credential
            log.error("the upstream check of %s failed: %s", probe.shown, type(exc).__name__)
            message = f"GET {probe.shown}: the check failed: {type(exc).__name__}"
            failed = Verdict(State.UNREACHABLE, message, _now())
            self._store([(rc, failed) for rc in roles])

    def _store(self, verdicts: list[tuple[RoleConfig, Verdict]]) -> None:
        """Keep the verdicts of roles still served as probed (a role rebound meanwhile
        stays NotChecked until the next round); tell the listeners when that changed."""
        live = self.runtime.roles
        changed = False
        for probed, verdict in verdicts:
            now = live.get(probed.name)
            if now is not None and now.config.upstream == probed.upstream:
                held = self.verdicts.get(probed.name)
                if held is None or (held.state, held.message) != (verdict.state, verdict.message):
                    changed = True
                self.verdicts[probed.name] = verdict
        if changed:
            bad = sum(v.state is not State.REACHABLE for v in self.verdicts.values())
            log.info("upstream health: %d of %d roles not Reachable", bad, len(self.verdicts))
            self._changed()

    async def _probe(
        self,
        session: aiohttp.ClientSession,
        probe: Probe,
        scrubber: Scrubber,
        role: RoleConfig,
    ) -> Answer:
        """GET ``probe`` within the timeout, at most ``concurrency`` at once, error text
        scrubbed by ``scrubber`` (the role's credentials)."""
        async with self._gate:
            loop = asyncio.get_running_loop()
            started = loop.time()
            self.probes += 1
            answer = await self._get(session, probe, scrubber)
            outcome = _outcome(answer)
            self.duration.labels(str(role.upstream.binding), outcome).observe(loop.time() - started)
            return answer

    async def _get(
        self, session: aiohttp.ClientSession, probe: Probe, scrubber: Scrubber
    ) -> Answer:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with session.get(
                    probe.url, headers=dict(probe.headers), allow_redirects=False
                ) as up:
                    if 200 <= up.status < 300:
                        body = await read_capped(up, MAX_LIST_BYTES)
                        models = served_models(body) if body is not None else None
                        return Answer(up.status, models)
                    head = await _read_head(up, MAX_ERROR_BYTES)
                    detail = _detail(scrubber.scrub(head))
                    return Answer(up.status, detail=detail)
        except TimeoutError:
            return Answer(error=f"no answer within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            text = scrubber.scrub(str(exc).encode()).decode(errors="replace")
            return Answer(error=f"{type(exc).__name__}: {text}"[: _DETAIL_CHARS * 2])
        except OSError as exc:
            return Answer(error=f"{type(exc).__name__}: {exc.strerror or ''}")


async def _read_head(up: aiohttp.ClientResponse, cap: int) -> bytes:
    """The first ``cap`` bytes at most of ``up``'s body (decompressed); the rest is not read
    (releasing ``up`` then closes its connection).

    Raises:
        aiohttp.ClientPayloadError: the body broke off or could not be decoded.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in up.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)[:cap]


def _outcome(answer: Answer) -> str:
    if answer.status is None:
        return "error"
    return str(answer.status // 100) + "xx"


def _detail(body: bytes) -> str:
    """The error message of an (already scrubbed) error body, cut short."""
    parsed = json_object(body)
    text: object = None
    if parsed is not None:
        error = parsed.get("error")
        text = error.get("message") if isinstance(error, dict) else error
        text = text or parsed.get("message") or parsed.get("detail")
    if text is None:
        text = body.decode(errors="replace")
    said = " ".join(str(text).split())
    return said[:_DETAIL_CHARS]


class _UpCollector(Collector):
    """``rolegate_upstream_up{role,namespace,binding,model}`` at scrape time."""

    def __init__(self, checker: HealthChecker) -> None:
        self._checker = checker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "rolegate_upstream_up",
            "1 while the role's upstream lists its model (Reachable), 0 while it is "
            "Unreachable, Unauthorized or ModelNotServed; absent while NotChecked.",
            labels=ROLE_LABELS,
        )
        roles = self._checker.runtime.roles
        for name, verdict in self._checker.verdicts.items():
            role = roles.get(name)
            if role is None or verdict.state is State.NOT_CHECKED:
                continue
            up = float(verdict.state is State.REACHABLE)
            family.add_metric(list(role_labels(role.config)), up)
        yield family


#: The app's :class:`HealthChecker` (absent: upstreams are not checked).
HEALTH: Final = web.AppKey("health", HealthChecker)


async def health_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the app's checker (:data:`HEALTH`) on the app's session from after the session
    is made (and before the config source loads) until cleanup; with presence, this
    replica's Lease reports its verdicts."""
    checker, runtime = app[HEALTH], app[RUNTIME]
    presence = app.get(PRESENCE)
    if presence is not None:  # the Lease reports the verdicts, renewed when they change
        presence.upstream = checker.published
        checker.listeners.append(presence.kick)
    runtime.listeners.append(checker.config_applied)
    task = asyncio.create_task(checker.run(app[SESSION]), name="rolegate-upstream-health")
    yield
    runtime.listeners.remove(checker.config_applied)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def status_entries(checker: HealthChecker | None, document: dict[str, Any]) -> None:
    """Add to a /status ``document`` each role's ``upstream`` and the checker's own
    ``upstreamChecks`` (``{"enabled": false}`` without a checker)."""
    if checker is None:
        document["upstreamChecks"] = {"enabled": False}
        return
    document["upstreamChecks"] = {"enabled": True, **checker.status()}
    for name, entry in document["roles"].items():
        entry["upstream"] = checker.entry(name)
