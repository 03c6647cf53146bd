"""AWS Signature Version 4 for the bedrock binding, and the AWS credentials it signs with.

Owns :class:`SigV4Auth` (a bedrock role's :class:`~rolegate_gateway.auth.UpstreamAuth`),
:func:`sigv4_auth` (the binding registry's builder), :class:`DefaultChain` (botocore's
default credential chain behind one process-wide botocore session) and
:func:`reset_default_chain` (for tests).

Where a role's credentials come from:

- the role's Secret (``awsAccessKeyId``, ``awsSecretAccessKey``, optional
  ``awsSessionToken``): static, used as they are;
- otherwise the gateway pod's own AWS identity, found by botocore's default chain: env
  vars, web identity (IRSA: ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``), the shared
  files, the container provider (EKS Pod Identity, ECS), IMDS. One chain serves every
  such role of the process.

botocore's chain and its refreshes are blocking (an STS or IMDS HTTP call made under a
``threading.Lock``), so the gateway never runs them on the event loop: the first
resolution and every refresh run in a thread (``asyncio.to_thread``), one at a time,
with every request that needs them waiting on that one (single-flight). Credentials
well outside botocore's refresh windows are read inline: that costs no I/O. Signing
itself is CPU only (tens of microseconds) and stays on the loop.

Nothing here logs, or puts into an exception's message, a credential value; they live in
botocore's objects only. botocore's own DEBUG log holds them (the canonical request with
the session token, STS's answer with the secret key), so importing this module sets the
``botocore`` logger to INFO unless something already set its level.

Sources: reference translation.md §10 (botocore signing of an aiohttp-sent request, the
chain, IRSA, the refresh windows); AWS, "Create a signed AWS API request"
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html);
botocore ``credentials.py`` (``RefreshableCredentials``: advisory window 15 min,
mandatory window 10 min before expiry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import botocore.credentials
import botocore.exceptions
import botocore.session

from rolegate_gateway import errors
from rolegate_gateway.auth.signing import Signer
from rolegate_gateway.config import Upstream
from rolegate_gateway.logs import Throttled

if TYPE_CHECKING:  # the translators' registry imports this package
    from rolegate_gateway.translators.base import UpstreamRequest

__all__ = [
    "SERVICE",
    "DefaultChain",
    "SigV4Auth",
    "default_chain",
    "reset_default_chain",
    "sigv4_auth",
]

log = logging.getLogger(__name__)

#: The SigV4 signing name of the Bedrock runtime (botocore's service model ``signingName``;
#: its endpoint prefix is ``bedrock-runtime``).
SERVICE = "bedrock"

#: Seconds before botocore's advisory refresh window opens within which credentials are
#: no longer read inline but in a thread: the inline read must never be the one that
#: finds the window open (and calls STS on the loop). One minute covers any stall.
_INLINE_HEADROOM_S = 60
#: botocore's advisory refresh window, seconds before expiry (``RefreshableCredentials``
#: keeps it in a private attribute; this is its default there).
_ADVISORY_S = 15 * 60

#: Seconds between two warnings of one role about missing or failing credentials (each
#: request of such a role fails with 502 and would log one).
_WARN_INTERVAL_S = 60.0

_Frozen = botocore.credentials.ReadOnlyCredentials

if logging.getLogger("botocore").level == logging.NOTSET:
    # botocore's DEBUG records hold credentials: the canonical request (botocore.auth)
    # carries X-Amz-Security-Token, STS's parsed answer (botocore.parsers) the secret key.
    logging.getLogger("botocore").setLevel(logging.INFO)


class _NoCredentials(Exception):
    """The default chain gave no credentials: it found none (``found_none``), or getting
    them failed (``reason``: what failed, e.g. "could not get AWS credentials:
    AssumeRoleWithWebIdentity failed (InvalidIdentityToken)"; never a value)."""

    def __init__(self, reason: str, *, found_none: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.found_none = found_none


class DefaultChain:
    """botocore's default credential chain, from one botocore session, resolved lazily.

    :meth:`frozen` gives the credentials to sign one request with. The first call resolves
    the chain in a thread; a refreshable result (IRSA, assume-role, container, IMDS) is
    refreshed in a thread when botocore's advisory window nears; concurrent callers wait on
    the same resolution or refresh (one thread, one STS call). A chain that found nothing
    is asked again on the next call (it may be the network that failed).

    Only used from one event loop at a time; a pending resolution started on another loop
    (a finished test's) is not waited on.
    """

    __slots__ = ("_credentials", "_inflight", "_session", "_session_factory")

    def __init__(
        self,
        session_factory: Callable[[], botocore.session.Session] = botocore.session.Session,
    ) -> None:
        """``session_factory``: builds the botocore session, on first use, in a thread."""
        self._session_factory = session_factory
        self._session: botocore.session.Session | None = None
        self._credentials: botocore.credentials.Credentials | None = None
        self._inflight: asyncio.Task[_Frozen] | None = None

    @property
    def method(self) -> str | None:
        """How botocore found the credentials (``env``, ``assume-role-with-web-identity``,
        ``iam-role``, ...); None before the first resolution."""
        return None if self._credentials is None else self._credentials.method

    async def frozen(self) -> _Frozen:
        """The credentials to sign one request with (an immutable snapshot).

        Raises:
            _NoCredentials: the chain found none, or resolving or refreshing them failed
                (its ``reason`` names the cause, never a value).
        """
        credentials = self._credentials
        if credentials is not None and not _refresh_near(credentials):
            return credentials.get_frozen_credentials()  # no I/O: outside every window
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(asyncio.to_thread(self._load))
            task.add_done_callback(self._settled)
            self._inflight = task
        # shield: a caller that gives up (its client left) leaves the load to the others
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[_Frozen]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left

    def _load(self) -> _Frozen:
        """In a thread: resolve the chain if not yet, then read (refreshing if due)."""
        try:
            credentials = self._credentials
            if credentials is None:
                if self._session is None:
                    self._session = self._session_factory()
                credentials = self._session.get_credentials()
                if credentials is None:
                    raise _NoCredentials("has no credentials", found_none=True)
                self._credentials = credentials
                log.info("AWS credentials found by the default chain: %s", credentials.method)
            frozen = credentials.get_frozen_credentials()
        except _NoCredentials:
            raise
        except botocore.exceptions.ClientError as exc:  # STS refused (bad token, role trust)
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise _NoCredentials(
                f"could not get AWS credentials: {exc.operation_name} failed ({code})",
                found_none=False,
            ) from exc
        except Exception as exc:  # any failure of the chain is the upstream's 502, not a 500
            raise _NoCredentials(
                f"could not get AWS credentials: {type(exc).__name__}", found_none=False
            ) from exc
        if frozen.access_key is None or frozen.secret_key is None:
            raise _NoCredentials("has no credentials", found_none=True)
        return frozen


def _refresh_near(credentials: botocore.credentials.Credentials) -> bool:
    """Reading ``credentials`` now could make botocore refresh them (blocking I/O)."""
    if not isinstance(credentials, botocore.credentials.RefreshableCredentials):
        return False  # env vars, the shared files, the Secret: never refreshed
    advisory = getattr(credentials, "_advisory_refresh_timeout", _ADVISORY_S)
    return credentials.refresh_needed(int(advisory) + _INLINE_HEADROOM_S)


_default: DefaultChain | None = None


def default_chain() -> DefaultChain:
    """The process-wide :class:`DefaultChain` (built on first use, without I/O)."""
    global _default
    if _default is None:
        _default = DefaultChain()
    return _default


def reset_default_chain() -> None:
    """Forget the process-wide chain, its botocore session and its credentials (tests
    that change the AWS environment call it; auths built later use a new chain)."""
    global _default
    _default = None


class SigV4Auth:
    """Signs each attempt of a bedrock request with SigV4 (service ``bedrock``).

    ``credentials``: the role's own (from its Secret), or None for ``chain`` (default: the
    process-wide :func:`default_chain`). ``role`` names the role in error messages.
    """

    __slots__ = ("_chain", "_log", "_region", "_role", "_signer", "_static")

    def __init__(
        self,
        region: str,
        credentials: botocore.credentials.Credentials | None = None,
        *,
        role: str | None = None,
        chain: DefaultChain | None = None,
    ) -> None:
        self._region = region
        self._signer = Signer(region, SERVICE)
        self._static = None if credentials is None else credentials.get_frozen_credentials()
        self._chain = chain if chain is not None or credentials is not None else default_chain()
        self._role = role
        self._log = Throttled(log, interval_s=_WARN_INTERVAL_S)

    @property
    def region(self) -> str:
        """The signing region."""
        return self._region

    async def headers(self, request: UpstreamRequest) -> dict[str, str]:
        """``request``'s headers plus ``X-Amz-Date`` (now, UTC, ``YYYYMMDDTHHMMSSZ``),
        ``X-Amz-Security-Token`` (with session credentials only) and ``Authorization``
        (``AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/bedrock/aws4_request,
        SignedHeaders=..., Signature=<64 hex>``).

        Signs ``request.url`` (the exact, already percent-encoded path that is sent;
        SigV4 encodes it once more in the canonical request), the body, ``host`` (from
        the URL) and every header of ``request``, as botocore would (:mod:`.signing`).
        Headers aiohttp adds later
        (User-Agent, Content-Length, Accept-Encoding) are not signed. Call it per attempt:
        AWS refuses an ``X-Amz-Date`` more than 5 minutes off.

        Raises:
            errors.UpstreamUnavailable: the role has no credentials, or getting them (STS,
                IMDS) failed; the message says what to do, without values.
        """
        frozen = await self._frozen()
        return self._signer.sign(request.url, request.headers, request.body, frozen)

    async def _frozen(self) -> _Frozen:
        if self._static is not None:
            return self._static
        assert self._chain is not None
        try:
            return await self._chain.frozen()
        except _NoCredentials as exc:
            who = f"role {self._role!r} (binding bedrock)" if self._role else "bedrock role"
            if exc.found_none:
                message = (
                    f"{who} has no credentials: set spec.credentials.secretRef to a Secret "
                    "with awsAccessKeyId and awsSecretAccessKey, or give the gateway's pod an "
                    "AWS identity (IRSA: a service account annotated with "
                    "eks.amazonaws.com/role-arn)"
                )
            else:
                message = f"{who} {exc.reason}"
            self._log.warning("aws-credentials", "%s", message)
            raise errors.UpstreamUnavailable(message) from exc


def sigv4_auth(upstream: Upstream, *, role: str | None = None) -> SigV4Auth:
    """The :class:`SigV4Auth` of a bedrock role: its Secret's AWS keys when it has them,
    else the process-wide default chain; region ``upstream.bedrock_region``.

    Raises:
        errors.ConfigError: no ``bedrock_region``, or an access key id without its secret.
    """
    if not upstream.bedrock_region:
        raise errors.ConfigError("binding bedrock needs bedrock.region (e.g. us-east-1)")
    creds = upstream.credentials
    if creds.aws_access_key_id is None:
        return SigV4Auth(upstream.bedrock_region, role=role)
    if creds.aws_secret_access_key is None:
        raise errors.ConfigError("awsAccessKeyId is set without awsSecretAccessKey")
    token = creds.aws_session_token
    static = botocore.credentials.Credentials(
        creds.aws_access_key_id.get_secret_value(),
        creds.aws_secret_access_key.get_secret_value(),
        token.get_secret_value() if token is not None else None,
        method="explicit",
    )
    return SigV4Auth(upstream.bedrock_region, static, role=role)
