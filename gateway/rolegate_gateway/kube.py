"""Config source for running in Kubernetes: the config Secret the operator writes.

Owns the Kubernetes API client setup shared with the operator (:func:`api_client`), the
layout of the config Secret (its data: :mod:`rolegate_gateway.secret_data`; its
:data:`HASH_ANNOTATION`) and
:class:`ConfigSecretSource`, which watches that one Secret and feeds ``Runtime.apply``.

The watch follows https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes:
list the Secret (a field selector on its name) and watch from the *list's* resourceVersion
(the collection's, which the API server's watch cache is sure to hold; the Secret's own may
be older than a restarted API server's window); a watch the server ends is resumed from the
last resourceVersion seen (events and bookmarks); 410 Gone starts over with a list at once,
and any other error starts over with a list after a backoff. A Secret whose config
(``config.json.gz``, or an older operator's ``config.json``) is byte-for-byte what the
sink last accepted is not handed over again, so resuming or listing again reloads nothing;
content the sink refused (or raised on) is not recorded as handed over, so a later list
hands it over again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import errors, secret_data
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.manifests import ConfigSink

__all__ = [
    "API_ERRORS",
    "CONFIG_KEY",
    "HASH_ANNOTATION",
    "ConfigSecretSource",
    "answer_json",
    "api_client",
    "describe",
    "load_configuration",
    "log_failure",
    "read_secret",
    "unavailable",
]

log = logging.getLogger(__name__)

#: The key of the config Secret that an operator before gzip wrote (still read).
CONFIG_KEY = secret_data.CONFIG_KEY
#: An annotation of the config Secret: ``GatewayConfig.hash`` of what it holds.
HASH_ANNOTATION = "rolegate.dev/config-hash"


async def load_configuration(kubeconfig: Path | None = None) -> client.Configuration:
    """Where and how to reach the API server: in-cluster (a pod's ServiceAccount) when
    running in a pod and no ``kubeconfig`` is given, else the kubeconfig file
    (``$KUBECONFIG`` or ``~/.kube/config`` when None).

    Raises:
        kubernetes_asyncio.config.ConfigException: no usable configuration.
    """
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None,
            client_configuration=configuration,
        )
    return configuration


async def api_client(
    kubeconfig: Path | None = None, *, user_agent: str = "rolegate-gateway"
) -> client.ApiClient:
    """A Kubernetes API client configured by :func:`load_configuration`, sending
    ``user_agent`` (what the API server's audit log and metrics name the client by); close
    it with ``await api.close()``.

    Raises:
        kubernetes_asyncio.config.ConfigException: no usable configuration.
    """
    api = client.ApiClient(await load_configuration(kubeconfig))
    api.user_agent = user_agent
    return api


#: What trouble with the API server looks like; anything else raised is a bug.
API_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError)


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the API server is unreachable or unavailable for now (no
    connection, a cut one, a timeout, HTTP 429 or 5xx): retry soon, it is likely back in
    seconds (a restart, a rollout). False for any other error, which waiting will not fix
    quickly (401, 403, 404, a bug): back off longer."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (exc.status or 0) >= 500
    return isinstance(
        exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, TimeoutError)
    )


def describe(exc: BaseException) -> str:
    """An API or connection error in a few words, for logs (never a response body: an
    API error body may quote the object, and an object may be a Secret)."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """Log a failed step that will be retried: a warning for API trouble, an error with
    its traceback for anything else (a bug). ``message`` gets ``args`` and then
    ``describe(exc)`` as its last %-argument."""
    expected = isinstance(exc, API_ERRORS)
    logger.log(
        logging.WARNING if expected else logging.ERROR,
        message,
        *args,
        describe(exc),
        exc_info=not expected,
    )


async def answer_json(call: Awaitable[Any]) -> dict[str, Any]:
    """The decoded JSON body of a ``_preload_content=False`` API call (read so, without
    the client's model classes, which would also log the body at debug level).

    With that option the client raises no error for an HTTP error status, so this does,
    with the Status's ``message`` as its reason (e.g. which permission is missing).

    Raises:
        ApiException: an HTTP error status.
    """
    response = cast(Any, await call)
    async with response:
        try:
            body: dict[str, Any] = await response.json()
        except (ValueError, aiohttp.ContentTypeError):
            body = {}
        if response.status >= 400:
            raise ApiException(
                status=response.status, reason=body.get("message") or response.reason
            )
        return body


async def read_secret(
    core: client.CoreV1Api, namespace: str, name: str, *, timeout_s: float = 30
) -> dict[str, Any] | None:
    """The Secret as a raw dict (``data`` still base64), or None when it does not exist.

    Read with :func:`answer_json`.

    Raises:
        ApiException: any other HTTP error; see :data:`API_ERRORS` for the rest.
    """
    try:
        return await answer_json(
            core.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=timeout_s
            )
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class ConfigSecretSource:
    """Watches one Secret through the API and feeds the sink when its config changes.

    Needs RBAC ``list`` and ``watch`` on secrets in ``namespace`` (both narrowed to
    ``name`` by a field selector; ``get`` is not used).

    Retries: after 410 Gone it lists again at once (a second 410 in a row backs off); after
    other errors it backs off from ``retry_delay_s``, doubling, up to
    ``max_unavailable_delay_s`` while the API server is unreachable or answers 429/5xx (so a
    restarted API server is seen within seconds) and up to ``max_retry_delay_s`` otherwise;
    each delay is jittered by up to 20 % so replicas do not retry in step.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        sink: ConfigSink,
        *,
        kubeconfig: Path | None = None,
        watch_timeout_s: int = 300,
        retry_delay_s: float = 0.5,
        max_retry_delay_s: float = 30.0,
        max_unavailable_delay_s: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.sink = sink
        self.kubeconfig = kubeconfig
        #: Seconds the API server keeps one watch open before ending it (resumed at once).
        self.watch_timeout_s = watch_timeout_s
        #: Seconds before the first retry after an API error (default 0.5); doubles up to
        #: ``max_unavailable_delay_s`` (default 2) while the API server is unreachable or
        #: unavailable, up to ``max_retry_delay_s`` (default 30) for other errors.
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self.max_unavailable_delay_s = max_unavailable_delay_s
        #: Watch requests made so far, and lists that answered (a start, or a start over
        #: after a broken watch); for tests and logs.
        self.watches = 0
        self.reads = 0
        self._api: client.ApiClient | None = None
        self._resource_version: str | None = None
        self._last_encoded: str | None = None  # "key=base64" the sink last accepted
        self._accepted: GatewayConfig | None = None  # and what it parsed to

    @property
    def ref(self) -> str:
        """``NAMESPACE/NAME`` of the watched Secret."""
        return f"{self.namespace}/{self.name}"

    async def _core(self) -> client.CoreV1Api:
        if self._api is None:
            self._api = await api_client(self.kubeconfig)
        return client.CoreV1Api(self._api)

    def _hand_over(self, secret: dict[str, Any]) -> bool:
        """Feed the sink the config in ``secret`` (a raw Secret); True when the sink
        accepted it (applied, or unchanged). Only accepted content is recorded, after the
        sink took it: refused content is handed over again by the next list.

        Raises:
            Exception: whatever the sink raised (the content is not recorded).
        """
        data = secret.get("data") or {}
        found = secret_data.encoded_key(data)
        encoded = f"{found[0]}={found[1]}" if found is not None else ""
        if encoded == self._last_encoded:
            log.debug("config Secret %s unchanged", self.ref)
            return False
        where = f"Secret {self.ref}"
        try:
            parsed = GatewayConfig.from_wire(secret_data.decode(data), previous=self._accepted)
        except errors.ConfigError as exc:
            self.sink.refuse(f"{where}: {exc}", source=where)
            return False
        report = self.sink.apply(parsed)
        if getattr(report, "outcome", None) == "refused":
            return False
        self._last_encoded, self._accepted = encoded, parsed
        return True

    async def _list(self) -> bool:
        """List the Secret by name, hand it over, and remember the list's resourceVersion
        to watch from; True when a config was accepted.

        Raises:
            ApiException: an HTTP error; see :data:`API_ERRORS` for the rest.
        """
        core = await self._core()
        body = await answer_json(
            core.list_namespaced_secret(
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                _preload_content=False,
                _request_timeout=30,
            )
        )
        self.reads += 1
        self._resource_version = str(body["metadata"]["resourceVersion"])
        items = body.get("items") or []
        log.debug("listed config Secret %s at resourceVersion %s", self.ref, self._resource_version)
        if not items:
            log.warning(
                "config Secret %s not found; waiting for the operator to write it", self.ref
            )
            return False
        return self._hand_over(items[0])

    async def load_once(self) -> bool:
        """List the Secret now; True when its config was accepted.

        API trouble is logged, not raised: :meth:`run` retries.
        """
        try:
            return await self._list()
        except API_ERRORS as exc:
            log.warning("cannot read config Secret %s: %s", self.ref, describe(exc))
            return False

    async def _watch(self) -> None:
        """One watch request from the last resourceVersion, until the server ends it.

        Raises:
            ApiException: 410 Gone (that resourceVersion is out of the server's window), or
                another error; see :data:`API_ERRORS` for the rest.
        """
        core = await self._core()
        kwargs: dict[str, Any] = {
            "field_selector": f"metadata.name={self.name}",
            "timeout_seconds": self.watch_timeout_s,
            "allow_watch_bookmarks": True,
            "_request_timeout": self.watch_timeout_s + 30,
        }
        if self._resource_version is not None:
            kwargs["resource_version"] = self._resource_version
        self.watches += 1
        log.debug("watching config Secret %s from %s", self.ref, self._resource_version)
        # return_type "object": events stay plain dicts (no model classes, which log bodies).
        async with watch.Watch(return_type="object") as stream:
            async for event in stream.stream(core.list_namespaced_secret, self.namespace, **kwargs):
                kind, obj = event["type"], event["raw_object"]
                self._resource_version = stream.resource_version or self._resource_version
                if kind in ("ADDED", "MODIFIED"):
                    log.info("config Secret %s changed", self.ref)
                    self._hand_over(obj)
                elif kind == "DELETED":
                    self._last_encoded = None
                    log.warning("config Secret %s was deleted; keeping the config in use", self.ref)

    async def run(self) -> None:
        """Watch until cancelled: resume a watch the server ended, list again after 410 Gone
        (at once) or another error (after a backoff)."""
        delay_s = self.retry_delay_s
        needs_list = self._resource_version is None
        gone_before = False  # the previous attempt ended in 410 too
        failures = 0
        while True:
            try:
                if needs_list:
                    await self._list()
                    needs_list = False
                if failures:
                    log.info(
                        "config Secret %s: watching again after %d failures", self.ref, failures
                    )
                    failures = 0
                    self.sink.source_restarted()
                await self._watch()
                delay_s = self.retry_delay_s
                gone_before = False
                continue
            except ApiException as exc:
                if exc.status == 410 and not gone_before:
                    log.info(
                        "config Secret %s: resourceVersion %s is gone (410), listing again",
                        self.ref,
                        self._resource_version,
                    )
                    gone_before = True
                    needs_list = True
                    continue
                error: Exception = exc
            except Exception as exc:  # whatever broke, watching must go on
                error = exc
            gone_before = False
            needs_list = True
            failures += 1
            said = describe(error) if isinstance(error, API_ERRORS) else type(error).__name__
            self.sink.source_failed(f"the config Secret cannot be read or watched: {said}")
            cap_s = self.max_unavailable_delay_s if unavailable(error) else self.max_retry_delay_s
            delay_s = min(delay_s, cap_s)
            if failures == 1 or not isinstance(error, API_ERRORS):
                log_failure(
                    log,
                    error,
                    "watch of config Secret %s broke, starting over in %.1f s: %s",
                    self.ref,
                    delay_s,
                )
            else:
                log.debug(
                    "config Secret %s: attempt %d failed: %s", self.ref, failures, describe(error)
                )
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.0))
            delay_s = min(delay_s * 2, cap_s)

    async def close(self) -> None:
        """Close the API client's connections."""
        if self._api is not None:
            await self._api.close()
            self._api = None
