"""A TCP relay on loopback that a fault test can cut: one client's connection to a server.

A client whose address (a kubeconfig's ``server``) points at the relay reaches the server
through it; :meth:`Relay.cut` closes every relayed connection at once (with a TCP reset, as
a dead network path or a crashed peer would) and refuses, or black-holes, new ones until
:meth:`Relay.restore`. The bytes pass untouched, so TLS works end to end and the relay sees
no paths: it counts connections, not requests.

The relay runs its own asyncio loop in a daemon thread, so it keeps relaying while the test
blocks (a ``ControlPlane.restart_apiserver()``, a ``time.sleep``) and works the same from
sync and async tests. Every public method is called from the test's thread.

    with Relay(("127.0.0.1", 6443)) as relay:
        client_url = f"https://127.0.0.1:{relay.port}"
        relay.cut()                 # every connection reset; new ones refused
        relay.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

__all__ = ["CutMode", "Relay"]

CutMode = Literal["refuse", "blackhole"]
"""What a cut relay does with a new connection: ``refuse`` resets it at once (the peer is
down); ``blackhole`` accepts it and never answers (a partition; the client waits for its own
timeout), until :meth:`Relay.restore` resets it."""

_CHUNK: Final = 65536
_T = TypeVar("_T")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0), not a graceful FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    """Relays TCP connections from ``127.0.0.1:<port>`` to ``target``; a context manager.

    Args:
        target: (host, port) of the server.
        name: for the thread's name and messages.

    Counters (read them from any thread): :attr:`accepted` connections in all,
    :attr:`relayed` of those passed on to the target, :attr:`refused` while cut.
    """

    def __init__(self, target: tuple[str, int], *, name: str = "relay") -> None:
        self.target: Final = target
        self.name: Final = name
        self.accepted = 0
        self.relayed = 0
        self.refused = 0
        self._mode: CutMode | None = None  # None: relaying
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()  # both ends of relayed connections
        self._held: set[asyncio.StreamWriter] = set()  # black-holed connections
        self._port = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> int:
        """Start relaying on a free loopback port; returns the port.

        Raises:
            RuntimeError: already started.
            OSError: no port could be bound.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0)
                )
                self._port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # handed to start()'s caller
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self._port

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError(f"{self.name}: its thread did not end within 10 s")

    def __enter__(self) -> Relay:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback port clients connect to (0 before :meth:`start`)."""
        return self._port

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        return self._mode is not None

    @property
    def open_connections(self) -> int:
        """Relayed connections open now."""
        return len(self._open) // 2

    def cut(self, mode: CutMode = "refuse") -> int:
        """Reset every relayed connection now, and treat new ones as ``mode`` says until
        :meth:`restore`; returns the number of connections reset."""
        return self._call(self._cut(mode))

    def restore(self) -> None:
        """Relay new connections again (black-holed ones are reset: their clients retry)."""
        self._call(self._restore())

    # -- internals (on the relay's loop) ----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _cut(self, mode: CutMode) -> int:
        self._mode = mode
        count = len(self._open) // 2
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()
        return count

    async def _restore(self) -> None:
        self._mode = None
        for writer in list(self._held):
            _reset(writer)
        self._held.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut("refuse")
        await self._restore()
        if self._server is not None:
            await self._server.wait_closed()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:  # the pipes of connections cut above: end them, not orphan them
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "refuse":
            self.refused += 1
            _reset(writer)
            return
        if self._mode == "blackhole":
            self.refused += 1
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)  # the target is down: so is the path through the relay
            return
        if self._mode is not None:  # cut while connecting
            _reset(up_writer)
            _reset(writer)
            return
        self.relayed += 1
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                end.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy ``src`` to ``dst`` until EOF, then half-close ``dst`` (or close it on error)."""
        try:
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
        except (OSError, RuntimeError):
            dst.transport.abort()
