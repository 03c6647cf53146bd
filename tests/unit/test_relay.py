"""devstack's TCP relay: bytes pass both ways; cut resets what is open and refuses or
black-holes new connections until restored; close leaves no thread behind."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from devstack.relay import Relay


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield str(host), int(port)
    server.shutdown()
    server.server_close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def refused(port: int) -> bool:
    """True when a new connection to ``port`` is reset or closed at once (the reset may
    come before connect() returns, or at the first read)."""
    try:
        sock = connect(port)
    except ConnectionResetError:
        return True
    with sock:
        return closed_by_peer(sock)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer reset or closed the connection (a read sees it at once)."""
    try:
        sock.settimeout(5)
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_relays_cuts_refuses_and_restores(echo: tuple[str, int]) -> None:
    with Relay(echo, name="test-relay") as relay:
        first = connect(relay.port)
        payload = bytes(range(256)) * 1024  # larger than one read
        assert roundtrip(first, payload) == payload
        assert (relay.relayed, relay.open_connections) == (1, 1)

        assert relay.cut() == 1
        assert relay.is_cut
        assert closed_by_peer(first)
        assert refused(relay.port)  # the listener stays: the connection is reset
        assert relay.refused == 1

        relay.restore()
        again = connect(relay.port)
        assert roundtrip(again, b"back") == b"back"
        for sock in (first, again):
            sock.close()
    assert "test-relay-loop" not in {t.name for t in threading.enumerate()}


def test_blackhole_holds_new_connections_until_restored(echo: tuple[str, int]) -> None:
    with Relay(echo) as relay:
        relay.cut("blackhole")
        held = connect(relay.port)
        held.sendall(b"anyone?")
        held.settimeout(0.3)
        with pytest.raises(TimeoutError):
            held.recv(1)  # no answer, no reset: the client waits
        relay.restore()
        assert closed_by_peer(held)  # reset on restore, so its client retries
        held.close()


def test_a_down_target_resets_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once closed
    with Relay(("127.0.0.1", port)) as relay:
        assert refused(relay.port)
        assert relay.relayed == 0
