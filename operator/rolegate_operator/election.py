"""Running the operator as one of several replicas: only the holder of the Lease runs it.

Owns the run model around :class:`~rolegate_operator.leader.Elector`. kopf cancels every
task of its event loop that it did not start (its ``docs/embedding.rst``), so the elector
has a thread and an event loop of its own (with its own API client): :func:`run_elected`
starts that thread, which serves the liveness endpoint as a standby (``{"standby": ...}``)
while it waits for the Lease, closes it, and hands over to the main thread, which runs
kopf (its own liveness endpoint on the same address). The thread then renews the Lease;
when it loses it (not renewed within the renew deadline, or another holder seen) it logs
an error and ends the process at once (``os._exit(1)``): Kubernetes starts it again, as a
follower. Meanwhile every write of the operator checks the elector's
:class:`~rolegate_operator.leader.LeaseGuard`. When kopf stops (SIGTERM, SIGINT), the
Lease is released so that a standby takes over at its next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.config import ConfigException

from rolegate_gateway.kube import api_client
from rolegate_gateway.lease_api import LeaseApi
from rolegate_operator.leader import Elector, LeaseGuard
from rolegate_operator.settings import LeaderElection

__all__ = ["run_elected"]

log = logging.getLogger(__name__)


class _Candidate:
    """The elector's thread: wait for the Lease (serving the standby's liveness endpoint),
    then keep it until told to release it, or end the process when it is lost."""

    def __init__(
        self, election: LeaderElection, *, kubeconfig: Path | None, user_agent: str, liveness: str
    ) -> None:
        self.election, self.kubeconfig = election, kubeconfig
        self.user_agent, self.liveness = user_agent, liveness
        self.acquired = threading.Event()
        self.elector: Elector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="rolegate-leader", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except ConfigException as exc:
            log.error("cannot reach the Kubernetes API: %s", exc)
            os._exit(1)
        except BaseException:
            log.exception("the leader elector failed; exiting")
            os._exit(1)

    async def _main(self) -> None:
        self._loop, self._release = asyncio.get_running_loop(), asyncio.Event()
        api = await api_client(self.kubeconfig, user_agent=self.user_agent)
        try:
            lease = LeaseApi(client.CoordinationV1Api(api), *self.election.lease)
            elector = Elector(lease, self.election)
            self.elector = elector
            standby = await self._serve_standby(elector)
            try:
                await elector.acquire()
            finally:
                await standby.cleanup()  # the port is kopf's from now on
            self.acquired.set()
            keeping = asyncio.create_task(elector.keep())
            releasing = asyncio.create_task(self._release.wait())
            await asyncio.wait({keeping, releasing}, return_when=asyncio.FIRST_COMPLETED)
            if keeping.done():
                log.error(
                    "lost the lease %s: %s; exiting, to start again as a follower",
                    self.election.lease_ref,
                    keeping.result(),
                )
                os._exit(1)
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
            await elector.release()
        finally:
            await api.close()

    async def _serve_standby(self, elector: Elector) -> web.AppRunner:
        """Serve ``GET /healthz`` on the liveness address while waiting: a standby is live."""

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "standby": {
                        "identity": self.election.identity,
                        "lease": self.election.lease_ref,
                        "holder": elector.holder or None,
                        "lastError": elector.last_error,
                    }
                }
            )

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = self.liveness.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        return runner

    def release(self, timeout_s: float) -> None:
        """Stop renewing, release the Lease and wait (at most ``timeout_s`` seconds) for
        the thread to end. Call from another thread, once :attr:`acquired` is set."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        self.thread.join(timeout_s)


def run_elected(
    election: LeaderElection,
    operate: Callable[[LeaseGuard], int],
    *,
    kubeconfig: Path | None,
    user_agent: str,
    liveness: str,
) -> int:
    """Wait until this process holds the Lease ``election.lease``, then return
    ``operate(guard)`` (which runs the operator in this thread, writing only while
    ``guard.check()`` passes), releasing the Lease when it returns or raises.

    ``liveness`` is the ``HOST:PORT`` that ``operate`` serves its liveness endpoint on;
    until then a standby's is served there. Ends the process (status 1) when the Lease is
    lost or the elector fails; returns 130 when interrupted (SIGINT) while waiting.
    """
    candidate = _Candidate(
        election, kubeconfig=kubeconfig, user_agent=user_agent, liveness=liveness
    )
    candidate.thread.start()
    try:
        candidate.acquired.wait()
    except KeyboardInterrupt:
        return 130
    assert candidate.elector is not None  # set before acquired
    try:
        return operate(candidate.elector.guard)
    finally:
        candidate.release(timeout_s=election.renew_deadline_s + 1)
