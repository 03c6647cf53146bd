"""The gateway Lease's wire format and the presence loop's peer count, without a cluster.

The real API server runs in tests/integration/test_rollout_status.py; here a stand-in for
the Lease API lets a test fail a list on purpose and move a fake monotonic clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from rolegate_gateway import cli, leases
from rolegate_gateway.lease_api import LeaseApi
from rolegate_gateway.presence import Presence
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.upstream_report import UPSTREAM_ANNOTATION


def lease(
    name: str,
    *,
    renew: str = "2026-12-02T05:00:00.000000Z",
    duration: int = 10,
    notes: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    given = {k: v for k, v in (notes or {}).items() if v is not None}
    return {
        "metadata": {
            "name": name,
            "namespace": "rolegate",
            "labels": leases.labels("gw-config"),
            "annotations": given,
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": renew},
    }


# -- names and labels ------------------------------------------------------------------------


def test_lease_names_are_object_names_and_two_processes_of_one_host_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert leases.lease_name("gw-config", "gateway-7d9f-abcde") == "gw-config-gw-gateway-7d9f-abcde"
    assert leases.lease_name("gw-config", "Host_Name.local-42") == "gw-config-gw-host-name-local-42"
    long = leases.lease_name("c" * 200, "p" * 200)
    assert len(long) == 253
    assert long != leases.lease_name("c" * 200, "p" * 199 + "q")  # the hash tells them apart
    monkeypatch.delenv("POD_NAME", raising=False)
    assert leases.default_identity().endswith(f"-{__import__('os').getpid()}")
    monkeypatch.setenv("POD_NAME", "gateway-5f7c-x2x9q")
    assert leases.default_identity() == "gateway-5f7c-x2x9q"


def test_the_gateway_of_label_fits_a_label_value() -> None:
    assert leases.gateway_of("gw-config") == "gw-config"
    value = leases.gateway_of("a" * 100)
    assert len(value) == 63
    assert value[-1].isalnum()
    assert leases.selector("gw-config") == (
        "app.kubernetes.io/component=gateway,rolegate.dev/gateway-of=gw-config"
    )


# -- annotations and their size limit ----------------------------------------------------------


def test_role_hashes_are_compact_sorted_json() -> None:
    notes = leases.report_annotations("c0ffee", {"query": "2222", "extract": "1111"})
    assert notes == {
        leases.CONFIG_HASH_ANNOTATION: "c0ffee",
        leases.ROLE_HASHES_ANNOTATION: '{"extract":"1111","query":"2222"}',
        leases.ROLE_HASHES_OMITTED_ANNOTATION: None,  # removed by the merge patch
    }


def test_role_hashes_over_the_limit_are_left_out_and_the_config_hash_decides() -> None:
    many = {f"role-{i:05d}-{'x' * 40}": f"{i:016x}" for i in range(3000)}
    assert len(json.dumps(many)) > leases.MAX_ROLE_HASHES_BYTES
    notes = leases.report_annotations("c0ffee", many)
    assert notes[leases.ROLE_HASHES_ANNOTATION] is None
    why = notes[leases.ROLE_HASHES_OMITTED_ANNOTATION]
    assert why is not None
    assert "3000 roles" in why
    total = sum(len(k) + len(v or "") for k, v in notes.items())
    assert total < 256 * 1024  # what the API server allows for all annotations

    report = leases.Report.from_lease(lease("gw-config-gw-a", notes=notes))
    assert report.role_hashes is None
    assert report.serves("role-00001", "anything", config_hash="c0ffee")
    assert not report.serves("role-00001", "anything", config_hash="beef")

    # Just under the limit: kept.
    few = {"r": "x" * (leases.MAX_ROLE_HASHES_BYTES - len('{"r":""}'))}
    assert leases.report_annotations("c0ffee", few)[leases.ROLE_HASHES_ANNOTATION] is not None


def test_a_report_is_read_leniently() -> None:
    notes = leases.report_annotations("c0ffee", {"extract": "1111"})
    report = leases.Report.from_lease(lease("gw-config-gw-a", notes=notes))
    assert report.serves("extract", "1111", config_hash="other")
    assert not report.serves("extract", "2222", config_hash="c0ffee")
    assert not report.serves("query", "1111", config_hash="c0ffee")

    # Before its first config: no hash, serves nothing. Garbled: serves nothing either.
    fresh = leases.Report.from_lease(lease("gw-config-gw-b"))
    assert (fresh.config_hash, fresh.role_hashes) == (None, {})
    garbled = lease("gw-config-gw-c", notes={leases.ROLE_HASHES_ANNOTATION: "{not json"})
    assert leases.Report.from_lease(garbled).role_hashes == {}
    broken = lease("gw-config-gw-d")
    broken["spec"]["leaseDurationSeconds"] = "soon"
    assert leases.Report.from_lease(broken).duration_s == 0  # never live


def test_expiry_counts_from_when_the_renewal_was_seen_not_from_renew_time() -> None:
    first = leases.Report.from_lease(lease("a", renew="1999-01-01T00:00:00.000000Z"))
    seen = leases.observe(None, first, 100.0)
    assert seen.live(109.9)  # a renewTime years old says nothing: the reader's clock decides
    assert not seen.live(110.0)
    # The same record seen again later: still observed at 100.
    assert leases.observe(seen, first, 105.0).observed_s == 100.0
    renewed = leases.Report.from_lease(lease("a", renew="1999-01-01T00:00:03.000000Z"))
    assert leases.observe(seen, renewed, 105.0).expires_s == 115.0


# -- the peer count ----------------------------------------------------------------------------


class _Answer:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.reason, self._body = status, "stand-in", body

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def json(self) -> dict[str, Any]:
        return self._body


class FakeLeases:
    """The Lease calls :class:`Presence` makes, over one stored Lease with the API server's
    optimistic concurrency (409 on a stale resourceVersion or an existing name); ``items``
    is what a list returns, ``down`` makes every call fail as a cut connection does."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.down = False
        self.stored: dict[str, Any] | None = None
        self.created: list[dict[str, Any]] = []
        self.replaced: list[dict[str, Any]] = []
        self.version = 0

    async def _answer(self, body: dict[str, Any], status: int = 200) -> _Answer:
        if self.down:
            raise OSError("connection refused")
        return _Answer(status, body)

    def _write(self, body: dict[str, Any]) -> Any:
        """Store ``body`` at a new resourceVersion and answer it."""
        self.version += 1
        meta = {**body["metadata"], "resourceVersion": str(self.version)}
        self.stored = {**body, "metadata": meta}
        return self._answer(self.stored)

    def list_namespaced_lease(self, namespace: str, **_: Any) -> Any:
        return self._answer({"metadata": {"resourceVersion": "7"}, "items": self.items})

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        return self._answer(self.stored or {}, 200 if self.stored else 404)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.created.append(body)
        if self.stored is not None:
            return self._answer({"message": "already exists"}, 409)
        return self._write(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Any:
        self.replaced.append(body)
        if self.stored is None:
            return self._answer({}, 404)
        if body["metadata"].get("resourceVersion") != self.stored["metadata"]["resourceVersion"]:
            return self._answer({"message": "the object has been modified"}, 409)
        return self._write(body)


@pytest.fixture
def presence() -> tuple[Presence, FakeLeases, list[float]]:
    now = [1000.0]
    api = FakeLeases()
    p = Presence("rolegate", "gw-config", identity="me", lease_duration_s=10, clock=lambda: now[0])

    async def stand_in() -> LeaseApi:
        return LeaseApi(api, "rolegate", p.name)  # type: ignore[arg-type]

    p._lease = stand_in  # type: ignore[method-assign]
    return p, api, now


async def test_live_replicas_counts_peers_renewed_within_their_duration(
    presence: tuple[Presence, FakeLeases, list[float]],
) -> None:
    p, api, now = presence
    assert p.live_replicas() == 1  # nothing listed yet: itself
    api.items = [lease("gw-config-gw-me"), lease("gw-config-gw-a"), lease("gw-config-gw-b")]
    await p.look()
    assert p.live_replicas() == 3  # its own Lease is not counted twice

    # b stops renewing; a renews every few seconds.
    for step in range(1, 5):
        now[0] += 3
        api.items[1] = lease("gw-config-gw-a", renew=f"2026-12-02T05:00:0{step}.000000Z")
        await p.look()
    assert now[0] == 1012.0
    assert p.live_replicas() == 2
    assert p.status()["peers"] == ["gw-config-gw-a"]


async def test_while_lists_fail_the_count_stays_as_last_seen(
    presence: tuple[Presence, FakeLeases, list[float]],
) -> None:
    p, api, now = presence
    api.items = [lease("gw-config-gw-a"), lease("gw-config-gw-b")]
    await p.look()
    assert p.live_replicas() == 3
    api.down = True
    now[0] += 60  # far past every duration, but nothing could be seen meanwhile
    with pytest.raises(OSError, match="refused"):
        await p.look()
    assert p.live_replicas() == 3  # never fewer peers than seen: no replica takes more
    # Seen again: a renewed meanwhile (its record changed), b did not (the same record a
    # minute later: it stopped renewing).
    api.down = False
    api.items[0] = lease("gw-config-gw-a", renew="2026-12-02T05:01:00.000000Z")
    await p.look()
    assert p.live_replicas() == 2


async def test_renewals_report_what_the_runtime_serves(
    presence: tuple[Presence, FakeLeases, list[float]],
) -> None:
    p, api, _ = presence
    await p.renew()  # no runtime yet: created, reporting no config
    [body] = api.created
    assert body["metadata"]["name"] == "gw-config-gw-me"
    assert body["metadata"]["labels"] == leases.labels("gw-config")
    assert body["metadata"]["annotations"] == {leases.ROLE_HASHES_ANNOTATION: "{}"}
    assert body["spec"]["holderIdentity"] == "me"
    assert body["spec"]["leaseDurationSeconds"] == 10
    runtime = Runtime()
    runtime.config_hash = "c0ffee"  # as after a config applied
    p.runtime = runtime
    await p.renew()  # then updates, at the version last written
    body = api.replaced[-1]
    assert body["metadata"]["resourceVersion"] == "1"
    assert body["metadata"]["annotations"][leases.CONFIG_HASH_ANNOTATION] == "c0ffee"
    assert body["spec"]["acquireTime"] == api.created[0]["spec"]["acquireTime"]
    assert p.renewals == 2


async def test_in_a_pod_the_lease_is_owned_by_the_pod(
    presence: tuple[Presence, FakeLeases, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The garbage collector deletes the Lease of a pod that went without a clean stop."""
    p, api, _ = presence
    monkeypatch.setenv("POD_NAME", "rolegate-gateway-7d9f-x2x9q")
    monkeypatch.setenv("POD_UID", "8a6e1c52-0000-4000-8000-000000000001")
    await p.renew()
    assert api.created[0]["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "rolegate-gateway-7d9f-x2x9q",
            "uid": "8a6e1c52-0000-4000-8000-000000000001",
        }
    ]
    monkeypatch.delenv("POD_UID")
    assert leases.pod_owner() == []  # outside a pod: nobody owns it


def test_bad_timings_are_refused() -> None:
    with pytest.raises(ValueError, match="renew interval"):
        Presence("ns", "gw", lease_duration_s=3, renew_s=3)
    with pytest.raises(ValueError, match="at least 1 s"):
        Presence("ns", "gw", lease_duration_s=0, renew_s=0.5)


def test_presence_is_on_with_a_config_secret_only() -> None:
    args = cli.parser().parse_args(["--config-secret", "rolegate/gw-config"])
    made = cli._presence(args)
    assert made is not None
    assert (made.namespace, made.lease_duration_s, made.renew_s) == ("rolegate", 10, 3.0)
    off = cli.parser().parse_args(["--config-secret", "rolegate/gw-config", "--no-presence"])
    assert cli._presence(off) is None
    assert cli._presence(cli.parser().parse_args(["--manifests", "."])) is None
    both = cli.parser().parse_args(["--manifests", ".", "--presence"])
    assert cli._presence_problem(both) == "--presence needs --config-secret"
    slow = ["--config-secret", "a/b", "--presence-lease-duration", "2", "--presence-renew", "2"]
    assert "below" in (cli._presence_problem(cli.parser().parse_args(slow)) or "")


async def test_a_lease_written_by_someone_else_is_read_and_written_over(
    presence: tuple[Presence, FakeLeases, list[float]],
) -> None:
    p, api, _ = presence
    # The previous process of this identity left its Lease: taken over, not an error.
    api.stored = {"metadata": {"name": "gw-config-gw-me", "resourceVersion": "40"}, "spec": {}}
    api.version = 40
    await p.renew()
    assert (len(api.created), len(api.replaced)) == (1, 1)
    assert api.stored["spec"]["holderIdentity"] == "me"
    # Someone annotates it meanwhile (a stale resourceVersion for the next update): read
    # again, written over, their annotation kept.
    notes = {**api.stored["metadata"]["annotations"], "example.com/note": "hi"}
    await api._write({**api.stored, "metadata": {**api.stored["metadata"], "annotations": notes}})
    await p.renew()
    assert api.stored["metadata"]["annotations"]["example.com/note"] == "hi"
    assert api.stored["metadata"]["resourceVersion"] == "43"
    # Deleted by hand: made anew.
    api.stored = None
    await p.renew()
    assert len(api.created) == 2
    assert p.renewals == 3


async def test_renewals_report_the_upstream_health_and_peers_read_it(
    presence: tuple[Presence, FakeLeases, list[float]],
) -> None:
    p, api, _ = presence
    p.runtime = Runtime()
    verdicts = {
        "extract": ("ModelNotServed", "model 'x' is not served"),
        "query": ("Reachable", ""),
    }
    p.upstream = lambda: verdicts
    await p.renew()
    notes = api.created[0]["metadata"]["annotations"]
    report = leases.Report.from_lease({"metadata": {"annotations": notes}, "spec": {}})
    assert report.upstream is not None
    assert report.upstream.verdict("extract") == ("ModelNotServed", "model 'x' is not served")
    assert report.upstream.verdict("query") == ("Reachable", "")
    p.upstream = None  # checks off: the annotation goes
    await p.renew()
    assert UPSTREAM_ANNOTATION not in api.replaced[-1]["metadata"]["annotations"]
