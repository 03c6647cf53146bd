"""Config source for running in Kubernetes: the config Secret the operator writes.

Owns the Kubernetes API client setup shared with the operator (:func:`api_client`), the
layout of the config Secret (:data:`CONFIG_KEY`, :data:`HASH_ANNOTATION`) and
:class:`ConfigSecretSource`, which watches that one Secret and feeds ``Runtime.apply``.

The watch follows https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes:
list (here: get) once, then watch from that resourceVersion; a watch the server ends is
resumed from the last resourceVersion seen; a broken one (410 Gone, a dropped connection)
starts over with a get. A Secret whose ``config.json`` is byte-for-byte what the runtime
already has is not handed over again, so resuming reloads nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import errors
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.manifests import ConfigSink

__all__ = [
    "API_ERRORS",
    "CONFIG_KEY",
    "HASH_ANNOTATION",
    "ConfigSecretSource",
    "api_client",
    "describe",
    "load_configuration",
    "log_failure",
    "read_secret",
]

log = logging.getLogger(__name__)

#: The key of the config Secret that holds ``GatewayConfig.to_wire()``.
CONFIG_KEY = "config.json"
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


async def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A Kubernetes API client configured by :func:`load_configuration`; close it with
    ``await api.close()``.

    Raises:
        kubernetes_asyncio.config.ConfigException: no usable configuration.
    """
    return client.ApiClient(await load_configuration(kubeconfig))


#: What trouble with the API server looks like; anything else raised is a bug.
API_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError)


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


async def read_secret(
    core: client.CoreV1Api, namespace: str, name: str, *, timeout_s: float = 30
) -> dict[str, Any] | None:
    """The Secret as a raw dict (``data`` still base64), or None when it does not exist.

    Read without the client's model classes (``_preload_content=False``), which would
    also log the body at debug level. With that, the client raises no error for an HTTP
    error status, so this does.

    Raises:
        ApiException: any other HTTP error; see :data:`API_ERRORS` for the rest.
    """
    response = cast(
        Any,
        await core.read_namespaced_secret(
            name, namespace, _preload_content=False, _request_timeout=timeout_s
        ),
    )
    async with response:
        if response.status == 404:
            return None
        body: dict[str, Any] = await response.json()
        if response.status >= 400:
            raise ApiException(status=response.status, reason=body.get("message"))
        return body


class ConfigSecretSource:
    """Watches one Secret through the API and feeds the sink when its config changes.

    Needs RBAC ``get``, ``list`` and ``watch`` on secrets in ``namespace`` (the list and
    watch are narrowed to ``name`` by a field selector).
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        sink: ConfigSink,
        *,
        kubeconfig: Path | None = None,
        watch_timeout_s: int = 300,
        retry_delay_s: float = 1.0,
        max_retry_delay_s: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.sink = sink
        self.kubeconfig = kubeconfig
        #: Seconds the API server keeps one watch open before ending it (resumed at once).
        self.watch_timeout_s = watch_timeout_s
        #: Seconds before the first retry after an API error; doubles up to the maximum.
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        #: Watch requests made so far, and Secrets read whole (a start, or a start over
        #: after a broken watch); for tests and logs.
        self.watches = 0
        self.reads = 0
        self._api: client.ApiClient | None = None
        self._resource_version: str | None = None
        self._last_encoded: str | None = None  # config.json as last handed over

    @property
    def ref(self) -> str:
        """``NAMESPACE/NAME`` of the watched Secret."""
        return f"{self.namespace}/{self.name}"

    async def _core(self) -> client.CoreV1Api:
        if self._api is None:
            self._api = await api_client(self.kubeconfig)
        return client.CoreV1Api(self._api)

    def _hand_over(self, secret: dict[str, Any]) -> bool:
        """Feed the sink the config in ``secret`` (a raw Secret); True when applied."""
        encoded = (secret.get("data") or {}).get(CONFIG_KEY, "")
        if encoded == self._last_encoded:
            log.debug("config Secret %s unchanged", self.ref)
            return False
        self._last_encoded = encoded
        where = f"Secret {self.ref}"
        try:
            if not encoded:
                raise errors.ConfigError(f"no key {CONFIG_KEY!r}")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise errors.ConfigError(f"{CONFIG_KEY} is not base64: {exc}") from exc
            parsed = GatewayConfig.from_wire(raw)
        except errors.ConfigError as exc:
            self.sink.refuse(f"{where}: {exc}", source=where)
            return False
        self.sink.apply(parsed)
        return True

    async def _get(self) -> bool:
        """Read the Secret and hand it over; remember where to watch from."""
        secret = await read_secret(await self._core(), self.namespace, self.name)
        if secret is None:
            self._resource_version = None
            log.warning(
                "config Secret %s not found; waiting for the operator to write it", self.ref
            )
            return False
        self.reads += 1
        self._resource_version = secret["metadata"]["resourceVersion"]
        return self._hand_over(secret)

    async def load_once(self) -> bool:
        """Read the Secret now; True when its config was applied.

        API trouble is logged, not raised: :meth:`run` retries.
        """
        try:
            return await self._get()
        except API_ERRORS as exc:
            log.warning("cannot read config Secret %s: %s", self.ref, describe(exc))
            return False

    async def _watch(self) -> None:
        """One watch request, until the server ends it."""
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
        async with watch.Watch() as stream:
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
        """Watch until cancelled: resume a watch the server ended, start over after errors."""
        delay_s = self.retry_delay_s
        needs_get = self._resource_version is None
        while True:
            try:
                if needs_get:
                    await self._get()
                    needs_get = False
                await self._watch()
                delay_s = self.retry_delay_s
            except Exception as exc:  # whatever broke, watching must go on
                log_failure(
                    log,
                    exc,
                    "watch of config Secret %s broke, starting over in %.1f s: %s",
                    self.ref,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.max_retry_delay_s)
                needs_get = True

    async def close(self) -> None:
        """Close the API client's connections."""
        if self._api is not None:
            await self._api.close()
            self._api = None
