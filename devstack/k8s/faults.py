"""Fault controls of a control plane: what real clusters do to their clients, on demand.

Owns :class:`Faults`, mixed into :class:`~devstack.k8s.controlplane.ControlPlane`, and
:class:`ApiRelay`: restart the API server (:meth:`Faults.restart_apiserver`, same port,
etcd's data kept) or etcd (:meth:`Faults.restart_etcd`, same data and port), compact etcd so
that older resourceVersions fall out of the window (:meth:`Faults.compact_etcd`), and give
one client a path to the API server that can be cut (:meth:`Faults.relay`, a
:class:`devstack.relay.Relay` with a kubeconfig through it). With ``audit=True`` the API
server writes an audit log of Secret, LLMRole, TokenReview and SubjectAccessReview
requests (:meth:`Faults.audit_events`: who listed and watched what, who asked for which
review), which is how a test counts a client's requests over TLS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from devstack.k8s import pki
from devstack.process import Process
from devstack.relay import Relay

__all__ = ["AUDIT_LOG", "ApiRelay", "Faults", "audit_args"]

log = logging.getLogger(__name__)

#: Where the API server writes its audit log, under the control plane's directory.
AUDIT_LOG: Final = Path("logs") / "audit.log"

_AUDIT_POLICY: Final[dict[str, Any]] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # Metadata only: who asked what, never a body (Secrets hold keys, a TokenReview's
    # spec holds the token it reviews).
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "resources": [
                {"group": "", "resources": ["secrets"]},
                {"group": "rolegate.dev", "resources": ["llmroles", "llmroles/status"]},
                {"group": "authentication.k8s.io", "resources": ["tokenreviews"]},
                {"group": "authorization.k8s.io", "resources": ["subjectaccessreviews"]},
            ],
        },
        {"level": "None"},
    ],
}


def audit_args(tmp: Path) -> list[str]:
    """kube-apiserver flags for an audit log of :data:`_AUDIT_POLICY` under ``tmp`` (the
    control plane's directory); writes the policy file there."""
    policy = tmp / "audit-policy.json"
    policy.write_text(json.dumps(_AUDIT_POLICY))
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={tmp / AUDIT_LOG}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
    ]


class ApiRelay(Relay):
    """A :class:`~devstack.relay.Relay` to a control plane's API server, with
    :attr:`kubeconfig`: the admin kubeconfig with its server set to the relay."""

    kubeconfig: Path


class Faults:
    """The fault controls; the control plane provides the state they act on."""

    components: dict[str, Process]
    audit: bool
    _port: int
    _etcd_url: str
    _relays: list[ApiRelay]

    if TYPE_CHECKING:

        @property
        def tmp_dir(self) -> Path: ...

        @property
        def pki(self) -> pki.Pki: ...

        def _wait_etcd(self) -> None: ...

        def _wait_apiserver(self) -> None: ...

    def relay(self) -> ApiRelay:
        """A started relay to the API server and a kubeconfig through it (admin identity),
        for one client whose connection a test cuts; closed by :meth:`stop` (or close it).

        Raises:
            OSError: no loopback port could be bound.
        """
        relay = ApiRelay(("127.0.0.1", self._port), name=f"api-relay-{len(self._relays)}")
        port = relay.start()
        self._relays.append(relay)
        relay.kubeconfig = pki.write_kubeconfig(
            self.tmp_dir / f"relay-{port}.kubeconfig",
            server=f"https://127.0.0.1:{port}",
            ca_cert=self.pki.ca_cert,
            client=self.pki.admin,
        )
        return relay

    def restart_apiserver(self, *, down_s: float = 0.0) -> float:
        """Stop kube-apiserver (SIGTERM; SIGKILL after 10 s), wait ``down_s`` seconds, start
        it again on the same port over the same etcd, and wait until ``/readyz`` says ok.

        Its watch cache starts empty at etcd's current revision: a client that resumes a
        watch from an older resourceVersion gets 410 Gone. Returns the seconds from the stop
        until ready again.

        Raises:
            devstack.process.ProcessDied: it exited while starting (its log tail attached).
            TimeoutError: not ready within ``startup_timeout_s``.
        """
        started = time.monotonic()
        apiserver = self.components["kube-apiserver"]
        apiserver.stop(grace_s=10.0)
        time.sleep(down_s)
        apiserver.start()
        self._wait_apiserver()
        took = time.monotonic() - started
        log.info("kube-apiserver restarted in %.1f s", took)
        return took

    def restart_etcd(self, *, down_s: float = 0.0) -> float:
        """Stop etcd (SIGTERM; SIGKILL after 10 s), wait ``down_s`` seconds, start it again
        with the same data directory and port, and wait until etcd is healthy and the API
        server ready again. Returns the seconds from the stop until then.

        Raises:
            devstack.process.ProcessDied: etcd exited while starting (log tail attached).
            TimeoutError: not healthy within ``startup_timeout_s``.
        """
        started = time.monotonic()
        etcd = self.components["etcd"]
        etcd.stop(grace_s=10.0)
        time.sleep(down_s)
        etcd.start()
        self._wait_etcd()
        self._wait_apiserver()
        took = time.monotonic() - started
        log.info("etcd restarted in %.1f s", took)
        return took

    def etcd_revision(self) -> int:
        """etcd's current revision (what the API server calls the latest resourceVersion).

        Raises:
            OSError: etcd does not answer.
        """
        answer = self._etcd("/v3/kv/range", {"key": "AA==", "limit": 1, "count_only": True})
        return int(answer["header"]["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision; returns that revision.

        Every resourceVersion older than it is gone from etcd: a watch that etcd serves from
        one (the API server's watch cache off, ``apiserver_args=["--watch-cache=false"]``)
        ends with 410 Gone, as after a long disconnect in a busy cluster. A watch the watch
        cache serves still resumes (the cache keeps its own window in memory).

        Raises:
            OSError: etcd does not answer (urllib.error.HTTPError: it refused).
        """
        revision = self.etcd_revision()
        self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        log.info("etcd compacted at revision %d", revision)
        return revision

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log so far: one dict per request stage (``ResponseStarted`` for
        watches, ``ResponseComplete`` for all), with ``verb`` (get, list, watch, ...),
        ``userAgent``, ``requestURI``, ``objectRef`` and ``responseStatus``. Secret,
        LLMRole, TokenReview and SubjectAccessReview requests only, and never a body.

        Raises:
            RuntimeError: the control plane was started without ``audit=True``.
        """
        if not self.audit:
            raise RuntimeError("this control plane keeps no audit log (audit=False)")
        try:
            lines = (self.tmp_dir / AUDIT_LOG).read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))  # the last line may be half written
        return events

    def _etcd(self, path: str, body: dict[str, Any]) -> Any:
        """POST to etcd's JSON gateway (``/v3/...``, keys base64) and decode the answer."""
        request = urllib.request.Request(
            f"{self._etcd_url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())
