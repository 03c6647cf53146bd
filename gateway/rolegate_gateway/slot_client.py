"""The concurrency store's connection: one redis-py asyncio client and its scripts.

Owns :class:`ScriptClient`: the client (short timeouts, one retry on a fresh connection
when a pooled one died), the three Lua scripts of :mod:`rolegate_gateway.slot_scripts`,
and the batching of script calls: the calls made in one event-loop tick go out together in
one pipeline (one write, one connection). Also :func:`redact`, a store URL fit to show.

Reference: https://redis.readthedocs.io/en/stable/examples/asyncio_examples.html,
https://redis.io/docs/latest/develop/use/pipelining/.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rolegate_gateway import slot_scripts as scripts

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["ScriptClient", "redact"]


def redact(url: str) -> str:
    """``url`` without its password (``redis://user:secret@host`` -> ``redis://user@host``)
    and query string, safe to log and show in /status; a URL that does not parse is shown
    as its scheme only."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the password
        return f"{url.partition('://')[0]}://…"
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


#: One store call waiting for its batch: script, keys, args, the future of its answer.
_Call = tuple["AsyncScript", list[str], list[Any], "asyncio.Future[Any]"]


class ScriptClient:
    """One store's client and scripts (``url``: ``redis://``, ``rediss://`` or ``unix://``;
    ``timeout_s``: seconds to connect and to wait for each answer).

    Attributes: ``client`` (redis-py's ``Redis``), ``acquire``/``release``/``renew`` (the
    scripts), ``errors`` (what a call raises when the store is unreachable or refuses).
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        # redis costs ~0.2 s to import: only when a store is configured.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as Disconnected
        from redis.exceptions import NoScriptError, RedisError

        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._noscript = NoScriptError
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # Once on a fresh connection when a pooled one died (the store restarted);
            # a timeout is not retried: the caller falls back instead of waiting twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(Disconnected,)),
            health_check_interval=0,
        )
        self.acquire: AsyncScript = self.client.register_script(scripts.ACQUIRE)
        self.release: AsyncScript = self.client.register_script(scripts.RELEASE)
        self.renew: AsyncScript = self.client.register_script(scripts.RENEW)
        self._pending: list[_Call] = []  # calls of this tick, not sent yet
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Run ``script`` in the store; the future has its answer or the store's error.

        The calls made in one event-loop tick go out together, in one pipeline (one write,
        one connection), sent by a task tracked until :meth:`close`; the future is never
        cancelled by its waiters' cancellation (await it through ``asyncio.shield``)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def busy(self) -> bool:
        """Whether calls are queued or on the wire."""
        return bool(self._pending or self._sending)

    def _flush(self) -> None:
        calls, self._pending = self._pending, []
        task = asyncio.create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        """Send ``calls`` and answer their futures: each its answer or error; cancelled
        when the sending is (at :meth:`close`)."""
        try:
            answers = await self._answers(calls)
        except asyncio.CancelledError:
            for *_, future in calls:
                future.cancel()
            raise
        except Exception as exc:  # the store's errors; a bug's reaches the callers too
            answers = [exc] * len(calls)
        for (*_, future), answer in zip(calls, answers, strict=True):
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _answers(self, calls: list[_Call]) -> list[Any]:
        """One EVALSHA, or a pipeline of them; a script the store lacks (it restarted) is
        loaded and run again."""
        if len(calls) == 1:
            script, keys, args, _ = calls[0]
            return [await script(keys=keys, args=args)]
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        for i, answer in enumerate(answers):
            if isinstance(answer, self._noscript):
                script, keys, args, _ = calls[i]
                answers[i] = await script(keys=keys, args=args)
        return answers

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the calls made so far to be answered."""
        await asyncio.sleep(0)  # this tick's calls go out
        if self._sending:
            await asyncio.wait(self._sending, timeout=timeout_s)

    async def close(self) -> None:
        """Cancel what is still on the wire and close the connections."""
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self.client.aclose()
