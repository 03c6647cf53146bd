"""A real ``redis-server`` on loopback: the concurrency store of the tests and the benchmark.

Owns :func:`ensure_installed` (Debian's ``redis-server`` package, through
:func:`devstack.apt.ensure`, without leaving the system service running) and
:class:`RedisProcess` (one supervised ``redis-server`` on 127.0.0.1, a free port, no
persistence, its own directory). A stopped server starts again on the same port, empty, as a
restarted production server without persistence would.

Debian's postinst starts the service where it can (``invoke-rc.d``/``deb-systemd-invoke``);
an install made here runs under a ``policy-rc.d`` that forbids it (exit 101: "action
forbidden by policy", see /usr/share/doc/init-system-helpers/README.policy-rc.d), and the
unit it enabled for the next boot is disabled again (``systemctl disable --now``, where
there is systemd), so no server is left listening on 6379. Reference for the flags: https://redis.io/docs/latest/operate/oss_and_stack/management/config/
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final, TextIO

from devstack import apt
from devstack.process import Process, free_ports

__all__ = ["PACKAGE", "RedisProcess", "ensure_installed"]

PACKAGE: Final = "redis-server"
_POLICY: Final = Path("/usr/sbin/policy-rc.d")


@contextlib.contextmanager
def _services_not_started() -> Iterator[None]:
    """A ``policy-rc.d`` that forbids starting services for the block, unless one exists."""
    if _POLICY.exists():
        yield
        return
    _POLICY.write_text("#!/bin/sh\n# rolegate devstack: installing packages\nexit 101\n")
    _POLICY.chmod(0o755)
    try:
        yield
    finally:
        _POLICY.unlink(missing_ok=True)


def ensure_installed(out: TextIO | None = None) -> Path:
    """The ``redis-server`` binary, installing Debian's package first when it is missing.

    Raises:
        devstack.apt.AptUnavailable: it is missing and cannot be installed here.
        devstack.cache.BuildFailed: ``apt-get`` failed.
    """
    if apt.missing([PACKAGE]):
        with _services_not_started():
            apt.ensure([PACKAGE], out, why="the concurrency store (redis)")
        if shutil.which("systemctl"):  # the postinst enabled it for the next boot
            subprocess.run(
                ["systemctl", "disable", "--now", "redis-server.service"],
                capture_output=True,
                check=False,
            )
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return Path(found)


class RedisProcess(Process):
    """``redis-server`` on 127.0.0.1 at a free port, no RDB/AOF, working in ``work``.

    ``url`` is ``redis://127.0.0.1:PORT/0``. :meth:`stop`, :meth:`kill` and :meth:`start`
    (inherited) are the fault controls: a restart serves the same port with no data.
    """

    def __init__(self, *, binary: Path, work: Path, port: int = 0) -> None:
        self.port = port or free_ports(1)[0]
        work.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]
        super().__init__("redis-server", argv, log_path=work / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def wait_serving(self, timeout_s: float = 15.0) -> str:
        """Wait until it answers PING; returns :attr:`url`.

        Raises:
            devstack.process.ProcessDied: it exited (its log tail attached).
            devstack.process.NotReady: no PONG within ``timeout_s`` seconds.
        """
        self.wait_ready(self.ping, what=f"PING on port {self.port}", timeout_s=timeout_s)
        return self.url

    def ping(self) -> bool:
        """Whether the server answers PING now (RESP inline command, one round trip).

        Raises:
            OSError: nothing listens, or the connection broke.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
