"""Client access: who a client is, and whether it may call a role.

Owns :class:`Access`, the gateway's one gate, in one of three modes (``--auth``):

- ``none``: every client may call every role (the standalone default).
- ``kubernetes``: the client's bearer token is a Kubernetes identity. An API key (a Secret
  labelled ``rolegate.dev/api-key=true``, of which the config holds only the sha256) is the
  user ``rolegate:apikey:<namespace>:<name>`` in the group ``rolegate:apikeys``; any other
  token is validated by a TokenReview for the audience ``--token-audience``. Whether the
  identity may call a role is a SubjectAccessReview for verb ``use`` on that role's LLMRole
  (``rolegate_gateway.auth.reviews``). kube-rbac-proxy's mechanism, with its caches.
- ``keys``: API keys only, each allowed the roles its Secret's ``rolegate.dev/roles``
  annotation names (``*``: all); for laptops and CI, without Kubernetes.

Caches: a TokenReview's answer by sha256 of the token, until the token's ``exp`` or
``token_ttl_s``, whichever comes first (an unauthenticated answer for ``denied_ttl_s``); a
SubjectAccessReview's by (identity, role) for ``allowed_ttl_s`` or ``denied_ttl_s``.
Concurrent requests that need the same review share one call. A JWT past its ``exp`` is
refused without a review (the API server accepts one for 60 s more, as clock-skew leeway).
Fail closed: when the API server cannot answer, cached decisions hold until they expire,
then the client gets 503 with ``Retry-After``; nothing is allowed that was not reviewed.
After a failed review no other is tried for :data:`DOWN_S` (503 at once), so a hanging
API server does not hold every new client for a review's whole timeout.

Never logged, counted or sent anywhere but the API server's TokenReview: the token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from rolegate_gateway import errors
from rolegate_gateway.config import ApiKey, GatewayConfig, RoleConfig
from rolegate_gateway.logs import Throttled

__all__ = [
    "API_KEY_GROUP",
    "MODES",
    "Access",
    "Identity",
    "Mode",
    "Review",
    "Reviewer",
    "bearer_token",
    "token_expiry",
]

log = logging.getLogger(__name__)

Mode = Literal["none", "kubernetes", "keys"]
MODES: tuple[Mode, ...] = ("none", "kubernetes", "keys")
#: The group of every API key's identity (one RoleBinding can grant all keys a role).
API_KEY_GROUP = "rolegate:apikeys"
#: Seconds a client is told to wait (``Retry-After``) when no review can be had.
RETRY_AFTER_S = 5
#: Entries each cache holds at most; beyond, expired ones go, then the oldest.
MAX_ENTRIES = 10_000
#: Seconds after a failed review during which no other is tried (503 at once).
DOWN_S = 1.0
#: Reviews in flight at once; more wait (garbage tokens cannot flood the API server).
MAX_REVIEWS = 16
#: Refused tokens remembered at most (apart from identities, which they cannot evict).
MAX_REFUSED = 1_000
_REFUSED = (
    "Invalid token: not a valid Kubernetes token for this gateway (expired, revoked, or "
    "for another audience) and not a known API key."
)

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is: a Kubernetes user as a TokenReview (or an API key) names it.

    ``extra`` holds the user's extra attributes as sorted (key, values) pairs, so an
    identity can be a cache key. ``roles``: for an API key under ``--auth keys``, the roles
    its Secret's annotation names (None: no annotation; for a Kubernetes identity RBAC
    decides)."""

    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    roles: tuple[str, ...] | None = field(default=None, compare=False)

    @classmethod
    def of_key(cls, key: ApiKey) -> Identity:
        """The identity of an API key: user ``rolegate:apikey:<ns>:<name>``, group
        :data:`API_KEY_GROUP`."""
        return cls(user=key.user, groups=(API_KEY_GROUP,), roles=key.roles)


@dataclass(frozen=True, slots=True)
class Review:
    """A TokenReview's answer: ``identity`` when the token was authenticated, else
    ``reason`` (the API server's ``status.error``, or why the gateway said no)."""

    identity: Identity | None
    reason: str = ""


class _Down(Exception):
    """A review not made: the last one failed less than :data:`DOWN_S` ago."""


class Reviewer(Protocol):
    """What ``--auth kubernetes`` asks: ``rolegate_gateway.auth.reviews.KubeReviews``.

    Both raise ``kube.API_ERRORS`` when the API server cannot answer."""

    async def token(self, token: str) -> Review:
        """Authenticate a bearer token (TokenReview)."""
        ...

    async def allowed(self, identity: Identity, namespace: str, name: str) -> tuple[bool, str]:
        """(allowed, reason) of verb ``use`` on an LLMRole (SubjectAccessReview)."""
        ...

    async def close(self) -> None:
        """Release the API client."""
        ...


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 §2.1; the scheme is
    case-insensitive), or None when there is none."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, read without checking its signature (the
    TokenReview checks it), or None when ``token`` is not a JWT with one (RFC 7519 §4.1.4).
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return float(exp)
    except OverflowError:  # an integer beyond float: no real expiry
        return None


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Cache(Generic[_K, _V]):
    """Answers by key until their own expiry (monotonic seconds); concurrent misses of one
    key share one fetch, which goes on when the request that started it goes away."""

    def __init__(self, clock: Callable[[], float], max_entries: int) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: dict[_K, tuple[float, _V]] = {}
        self._pending: dict[_K, asyncio.Task[_V]] = {}

    async def get(self, key: _K, fetch: Callable[[], Awaitable[tuple[_V, float]]]) -> _V:
        """The answer for ``key``: held, or fetched (``fetch`` returns it and its expiry).

        Raises:
            whatever ``fetch`` raised (nothing is cached then).
        """
        held = self._entries.get(key)
        if held is not None:
            if held[0] > self._clock():
                return held[1]
            del self._entries[key]
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.create_task(self._fill(key, fetch))
            task.add_done_callback(_retrieved)  # its error is seen even if nobody waits
        return await asyncio.shield(task)

    async def _fill(self, key: _K, fetch: Callable[[], Awaitable[tuple[_V, float]]]) -> _V:
        try:
            value, expires = await fetch()
            if expires > self._clock():
                self._store(key, value, expires)
            return value
        finally:
            del self._pending[key]

    def _store(self, key: _K, value: _V, expires: float) -> None:
        if len(self._entries) >= self._max:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (expires, value)

    def __len__(self) -> int:
        return len(self._entries)


class Access:
    """The gateway's client access in one ``mode`` (see the module docstring).

    ``reviewer``: required for ``kubernetes``. ``count``: called with each decision's
    result (``allowed``, ``denied``, ``unauthenticated``, ``unavailable``) for
    ``rolegate_auth_total``. TTLs are seconds.

    Raises:
        ValueError: an unknown mode, or ``kubernetes`` without a reviewer.
    """

    def __init__(
        self,
        mode: Mode = "none",
        *,
        reviewer: Reviewer | None = None,
        token_ttl_s: float = 60.0,
        allowed_ttl_s: float = 30.0,
        denied_ttl_s: float = 5.0,
        count: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown auth mode {mode!r} (one of {', '.join(MODES)})")
        if mode == "kubernetes" and reviewer is None:
            raise ValueError("--auth kubernetes needs the Kubernetes API (a reviewer)")
        self.mode = mode
        #: False for ``none``: the request path checks this one attribute and nothing else.
        self.enabled = mode != "none"
        self.reviewer = reviewer
        self.token_ttl_s = token_ttl_s
        self.allowed_ttl_s = allowed_ttl_s
        self.denied_ttl_s = denied_ttl_s
        self._count = count or (lambda result: None)
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, ApiKey] = {}
        self._down_until = -math.inf
        self._slots = asyncio.Semaphore(MAX_REVIEWS)
        #: sha256 of refused tokens -> (monotonic expiry, why), apart from the identities.
        self._refused: dict[str, tuple[float, str]] = {}
        #: Reviews asked of the API server, by kind (for /status and tests).
        self.reviews = {"tokenReviews": 0, "accessReviews": 0}
        self.tokens: _Cache[str, Review] = _Cache(clock, max_entries)
        self.decisions: _Cache[tuple[Identity, str, str], tuple[bool, str]] = _Cache(
            clock, max_entries
        )
        self._throttled = Throttled(log, interval_s=10.0)

    def sync(self, config: GatewayConfig) -> None:
        """Take the API keys of ``config`` (a runtime listener: called with each config
        applied). A rotated or deleted key stops working at once."""
        self._keys = {key.sha256: key for key in config.api_keys}

    # -- authentication ---------------------------------------------------------------

    async def identify(self, headers: Mapping[str, str]) -> Identity | None:
        """Who sent a request with ``headers``; None when access is open (mode ``none``).

        Raises:
            errors.Unauthenticated: no bearer token, or one that is not a known API key
                or a valid Kubernetes token for the audience (expired, revoked, another
                audience).
            errors.AuthUnavailable: the API server could not review the token.
        """
        if not self.enabled:
            return None
        token = bearer_token(headers)
        if token is None:
            self._unauthenticated("no bearer token")
            raise errors.Unauthenticated(
                "No API key or token provided: send 'Authorization: Bearer <token>' with a "
                "Kubernetes ServiceAccount token or a rolegate API key."
            )
        if not token.isascii():  # RFC 6750's b64token is ASCII; this is no key or token
            self._unauthenticated("a token that is not ASCII")
            raise errors.Unauthenticated("Invalid token.")
        digest = hashlib.sha256(token.encode()).hexdigest()
        key = self._keys.get(digest)
        if key is not None:
            return Identity.of_key(key)
        if self.reviewer is None:  # keys only
            self._unauthenticated("an unknown API key")
            raise errors.Unauthenticated("Invalid API key.")
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > self._clock():
            self._unauthenticated(f"the token was refused: {refused[1]}")
            raise errors.Unauthenticated(_REFUSED)
        try:
            pending = self.tokens.get(digest, lambda: self._review(token, digest))
            review = await self._decide(pending)
        except errors.AuthUnavailable:
            self._count("unavailable")
            raise
        if review.identity is None:
            self._unauthenticated(f"the token was refused: {review.reason}")
            raise errors.Unauthenticated(_REFUSED)
        return review.identity

    async def _review(self, token: str, digest: str) -> tuple[Review, float]:
        assert self.reviewer is not None
        exp = token_expiry(token)  # on a miss only: a cached identity expires with its token
        if exp is not None and exp <= self._wall():
            # The API server accepts a token up to 60 s past its exp (leeway for skew between
            # clocks); the gateway's own (NTP-synced) clock refuses it without asking.
            review = Review(None, "the token has expired")
        else:
            review = await self._ask("tokenReviews", self.reviewer.token(token))
        now = self._clock()
        if review.identity is None:  # held apart: refusals must not evict identities
            if len(self._refused) >= MAX_REFUSED:
                self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
                while len(self._refused) >= MAX_REFUSED:
                    del self._refused[next(iter(self._refused))]
            self._refused[digest] = (now + self.denied_ttl_s, review.reason)
            return review, now  # not for the identities' cache
        expires = now + self.token_ttl_s
        if exp is not None:
            expires = min(expires, now + exp - self._wall())
        return review, expires

    def _unauthenticated(self, reason: str) -> None:
        self._count("unauthenticated")
        self._throttled.warning("unauthenticated", "unauthenticated request: %s", reason)

    # -- authorisation ----------------------------------------------------------------

    async def may(self, identity: Identity, role: RoleConfig) -> tuple[bool, str]:
        """(allowed, reason): may ``identity`` call ``role``? Counts nothing.

        Raises:
            errors.AuthUnavailable: the API server could not answer, and no unexpired
                decision is held.
        """
        if self.mode == "keys":
            roles = identity.roles or ()
            if "*" in roles or role.name in roles:
                return True, ""
            if identity.roles is None:
                return False, "the API key's Secret has no rolegate.dev/roles annotation"
            return False, "the role is not in the API key's rolegate.dev/roles annotation"
        key = (identity, role.namespace, role.name)
        return await self._decide(
            self.decisions.get(key, lambda: self._access(identity, role.namespace, role.name))
        )

    async def _access(
        self, identity: Identity, namespace: str, name: str
    ) -> tuple[tuple[bool, str], float]:
        assert self.reviewer is not None
        call = self.reviewer.allowed(identity, namespace, name)
        allowed, reason = await self._ask("accessReviews", call)
        ttl = self.allowed_ttl_s if allowed else self.denied_ttl_s
        return (allowed, reason), self._clock() + ttl

    async def authorize(self, identity: Identity | None, role: RoleConfig) -> None:
        """Let ``identity`` call ``role``, or raise; counts and logs the decision.

        Raises:
            errors.PermissionDenied: RBAC (or the key's annotation) does not allow it.
            errors.AuthUnavailable: as :meth:`may`.
        """
        if identity is None:
            return
        try:
            allowed, reason = await self.may(identity, role)
        except errors.AuthUnavailable:
            self._count("unavailable")
            raise
        if allowed:
            self._count("allowed")
            return
        self._count("denied")
        self._throttled.warning(
            f"denied {identity.user} {role.namespace}/{role.name}",
            "denied: %s may not use role %s (namespace %s)%s",
            identity.user,
            role.name,
            role.namespace,
            f": {reason}" if reason else "",
        )
        raise errors.PermissionDenied(
            f"{identity.user!r} may not use the role {role.name!r}: it needs the RBAC verb "
            f"'use' on llmroles.rolegate.dev {role.name!r} in namespace {role.namespace!r} "
            "(e.g. a RoleBinding to the ClusterRole rolegate-user)."
            if self.mode == "kubernetes"
            else f"this API key may not use the role {role.name!r} (its Secret's "
            "rolegate.dev/roles annotation does not name it)."
        )

    async def visible(self, identity: Identity | None, roles: Iterable[RoleConfig]) -> list[str]:
        """The names of ``roles`` that ``identity`` may call (every one when open), sorted.

        Raises:
            errors.AuthUnavailable: as :meth:`may`.
        """
        configs = list(roles)
        if identity is None:
            return sorted(r.name for r in configs)
        try:
            answers = await asyncio.gather(*(self.may(identity, r) for r in configs))
        except errors.AuthUnavailable:
            self._count("unavailable")
            raise
        return sorted(r.name for r, (allowed, _) in zip(configs, answers, strict=True) if allowed)

    async def _ask(self, kind: str, call: Coroutine[Any, Any, _V]) -> _V:
        """One review of the API server (counted in :attr:`reviews` under ``kind``); while
        the last one failed less than :data:`DOWN_S` ago, none is made (a hanging API
        server would hold every new client for the review's whole timeout): :class:`_Down`
        at once."""
        if self._clock() < self._down_until:
            call.close()
            raise _Down()
        try:
            async with self._slots:
                self.reviews[kind] += 1
                return await call
        except asyncio.CancelledError:
            raise
        except Exception:
            self._down_until = self._clock() + DOWN_S
            raise

    async def _decide(self, pending: Awaitable[_V]) -> _V:
        """Await a cached review; API trouble (``kube.API_ERRORS``) is a 503, logged."""
        try:
            return await pending
        except errors.GatewayError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, _Down):
                self._unavailable(exc)
            raise errors.AuthUnavailable(
                "The gateway cannot check this client's access right now (the Kubernetes "
                "API is unreachable); try again shortly.",
                retry_after_s=RETRY_AFTER_S,
            ) from exc

    def _unavailable(self, exc: BaseException) -> None:
        status = getattr(exc, "status", None)
        if status in (401, 403):
            self._throttled.warning(
                "review refused",
                "the API server refused the gateway's review (HTTP %s): bind its "
                "ServiceAccount to the ClusterRole system:auth-delegator",
                status,
            )
        else:
            what = f"HTTP {status}" if status else (str(exc) or type(exc).__name__)
            self._throttled.warning(
                "review failed", "cannot review a client through the Kubernetes API: %s", what
            )

    def status(self) -> dict[str, Any]:
        """For ``/status``: the mode, the keys known, the caches' sizes and the reviews made."""
        return {
            "mode": self.mode,
            "apiKeys": len(self._keys),
            "tokenReviews": {"cached": len(self.tokens), "made": self.reviews["tokenReviews"]},
            "accessReviews": {
                "cached": len(self.decisions),
                "made": self.reviews["accessReviews"],
            },
        }

    async def close(self) -> None:
        """Release the reviewer's API client."""
        if self.reviewer is not None:
            await self.reviewer.close()
