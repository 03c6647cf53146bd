"""The reconcile pass against a recording stand-in for the API: what it writes, and when not.

The real API server runs in tests/integration/test_operator.py; here the stand-in lets a
test fail one write on purpose and hold the operator's view stale, which a real server
does not do on demand.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_gateway import secret_data
from rolegate_operator.apply import Kube
from rolegate_operator.reconcile import STATUS_WRITERS, Reconciler
from rolegate_operator.settings import Settings
from rolegate_operator.store import Store

KEY = "sk-RECONCILE-77aa"


class FakeKube(Kube):
    """Records writes; ``fail`` names writes to refuse with HTTP 500 (once each). Status
    patches check their resourceVersion precondition against :attr:`versions` (role name ->
    the server's resourceVersion) as the API server does, and bump it."""

    def __init__(self) -> None:
        self.writes = {"secret": 0, "status": 0, "event": 0}
        self.secret: dict[str, Any] | None = None
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.fail: set[str] = set()
        self.versions: dict[str, int] = {}
        self.conflicts = 0

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            self.fail.discard(what)
            raise ApiException(status=500, reason="Internal Server Error")

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secret

    async def write_secret(self, body: dict[str, Any], *, current: dict[str, Any] | None) -> None:
        self._maybe_fail("secret")
        self.secret = body
        self.writes["secret"] += 1

    async def patch_status(
        self, namespace: str, name: str, *, resource_version: str, status: dict[str, Any]
    ) -> str | None:
        self._maybe_fail(f"status/{name}")
        if self.versions.setdefault(name, 1) != int(resource_version):
            self.conflicts += 1
            return None
        self.versions[name] += 1
        # A JSON merge patch (RFC 7396) at the top level of status: null removes a field.
        merged = {**self.statuses.get(name, {}), **status}
        self.statuses[name] = {k: v for k, v in merged.items() if v is not None}
        self.writes["status"] += 1
        return str(self.versions[name])

    async def post_event(self, body: dict[str, Any]) -> None:
        self.events.append(body)
        self.writes["event"] += 1


def llmrole(
    name: str, secret: str = "creds", status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team",
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": "2026-11-21T10:00:00Z",
        },
        "spec": {
            "binding": "openai",
            "model": "gpt-4o-mini",
            "credentials": {"secretRef": {"name": secret}},
        },
        "status": status or {},
    }


class Secrets:
    """The store's Secrets, as a mapping a test edits: ``secrets[ns, name] = keys``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __setitem__(self, key: tuple[str, str], keys: dict[str, str]) -> None:
        held = self.store.secrets.entries.get(key)
        self.store.secrets.put(key, (held[0] if held else 0) + 1, keys)


@pytest.fixture
def world() -> tuple[Reconciler, FakeKube, list[dict[str, Any]], Secrets]:
    kube = FakeKube()
    store = Store(stale=False)
    roles = [llmrole("extract"), llmrole("query")]
    for role in roles:
        store.roles.put(("team", role["metadata"]["name"]), 1, role)
    secrets = Secrets(store)
    secrets["team", "creds"] = {"apiKey": KEY}
    settings = Settings(config_secret=("rolegate", "gw-config"))
    reconciler = Reconciler(settings, kube, store=store)
    return reconciler, kube, roles, secrets


def see_own_writes(kube: FakeKube, roles: list[dict[str, Any]]) -> None:
    """What the watch delivers later: the statuses written, and their resourceVersions, in
    the operator's view."""
    for role in roles:
        name = role["metadata"]["name"]
        role["status"] = kube.statuses.get(name, role["status"])
        role["metadata"]["resourceVersion"] = str(kube.versions.get(name, 1))


async def test_first_pass_writes_config_statuses_and_events_then_nothing(world: Any) -> None:
    reconciler, kube, roles, _ = world
    first = await reconciler.reconcile()
    assert (first.served, first.wrote_config, first.statuses_written) == (2, True, 2)
    assert len(kube.events) == 4  # Ready and CredentialsResolved of each role
    assert KEY in secret_data.decode(kube.secret["data"]).decode()

    # The watch has not caught up yet: what was written is known, so nothing is sent
    # again (no lastTransitionTime stamped anew) and no Event repeats.
    written = copy.deepcopy(kube.statuses)
    await asyncio.sleep(1.1)  # a later second, in case anything were stamped anew
    again = await reconciler.reconcile()
    assert (again.wrote_config, again.statuses_written) == (False, 0)
    assert kube.statuses == written
    assert len(kube.events) == 4
    assert kube.conflicts == 0

    see_own_writes(kube, roles)
    writes = dict(kube.writes)
    settled = await reconciler.reconcile()
    assert (settled.wrote_config, settled.statuses_written, settled.events_posted) == (False, 0, 0)
    assert kube.writes == writes


async def test_a_failed_status_write_spares_the_others_and_is_retried(world: Any) -> None:
    reconciler, kube, roles, _ = world
    kube.fail.add("status/extract")
    with pytest.raises(ApiException):
        await reconciler.reconcile()
    assert list(kube.statuses) == ["query"]  # written despite extract's failure
    events = len(kube.events)

    see_own_writes(kube, roles)
    retried = await reconciler.reconcile()
    assert retried.statuses_written == 1
    assert sorted(kube.statuses) == ["extract", "query"]
    assert len(kube.events) == events + 2  # extract's two, query's not again


async def test_a_failed_config_write_still_reports_on_every_role(world: Any) -> None:
    reconciler, kube, roles, _ = world
    kube.fail.add("secret")
    with pytest.raises(ApiException):
        await reconciler.reconcile()
    ready = {
        name: next(c for c in status["conditions"] if c["type"] == "Ready")
        for name, status in kube.statuses.items()
    }
    assert {n: (c["status"], c["reason"]) for n, c in ready.items()} == {
        "extract": ("Unknown", "ConfigNotWritten"),
        "query": ("Unknown", "ConfigNotWritten"),
    }
    assert "rolegate/gw-config" in ready["extract"]["message"]

    see_own_writes(kube, roles)
    fixed = await reconciler.reconcile()
    assert fixed.wrote_config is True
    # UpstreamReady stays Unknown: no gateway replica reports here
    conditions = [c for s in kube.statuses.values() for c in s["conditions"]]
    assert all(c["status"] == "True" for c in conditions if c["type"] != "UpstreamReady")


async def test_rotation_rewrites_the_config_and_the_role_hash_only(world: Any) -> None:
    reconciler, kube, roles, secrets = world
    await reconciler.reconcile()
    see_own_writes(kube, roles)
    hashes = {n: s["configHash"] for n, s in kube.statuses.items()}
    events = len(kube.events)

    secrets["team", "creds"] = {"apiKey": KEY + "-rotated"}
    rotated = await reconciler.reconcile()
    assert rotated.wrote_config is True
    assert rotated.statuses_written == 2
    assert all(kube.statuses[n]["configHash"] != h for n, h in hashes.items())
    assert len(kube.events) == events  # no condition changed


async def test_a_change_while_the_view_lags_is_written_on_top_of_the_own_write(
    world: Any,
) -> None:
    reconciler, kube, _, secrets = world
    await reconciler.reconcile()
    # The watch has not delivered the status writes yet; the key rotates meanwhile: the new
    # status goes on top of the version this operator wrote, not the stale view's.
    secrets["team", "creds"] = {"apiKey": KEY + "-rotated"}
    rotated = await reconciler.reconcile()
    assert (rotated.statuses_written, kube.conflicts) == (2, 0)
    assert kube.versions == {"extract": 3, "query": 3}


async def test_a_status_for_a_role_changed_or_recreated_meanwhile_is_not_written(
    world: Any,
) -> None:
    reconciler, kube, roles, _ = world
    await reconciler.reconcile()
    see_own_writes(kube, roles)
    # Deleted and created anew with the same name (or changed) behind the operator's back:
    # the server is at another version, so the stale view's status is refused (409).
    kube.versions["extract"] = 7
    roles[0]["metadata"]["uid"] = "uid-extract-2"
    reconciler.store.secrets.put(("team", "creds"), 9, {})  # a change that alters statuses
    stale = await reconciler.reconcile()
    assert stale.statuses_written == 1  # query's
    assert kube.conflicts == 1
    assert kube.statuses["extract"]["conditions"][1]["reason"] == "SecretResolved"


async def test_a_fresh_pass_drops_what_the_lists_no_longer_hold(world: Any) -> None:
    reconciler, kube, roles, _ = world
    listed = [roles[0]]  # query deleted, and creds too, while the watch was away

    async def list_roles(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return listed, "5"

    async def list_secrets(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return [], "5"

    kube.list_roles = list_roles
    kube.list_secrets = list_secrets
    first = await reconciler.reconcile()
    assert (first.roles, first.served, first.list_s) == (2, 2, None)  # the store's view

    reconciler.role_event(None, roles[0])  # a watch listed anew: a gap ended
    assert reconciler.store.stale
    fresh = await reconciler.reconcile(fresh=True)
    assert (fresh.roles, fresh.served, reconciler.lists) == (1, 0, 1)
    assert fresh.list_s is not None
    assert not reconciler.store.stale
    assert kube.statuses["extract"]["conditions"][1]["reason"] == "SecretNotFound"


async def test_a_pass_writes_many_statuses_side_by_side_within_a_bound() -> None:
    """5,000 new roles are 5,000 status writes and 10,000 Events: one after the other
    they took minutes; a pass keeps up to STATUS_WRITERS in flight, never more."""

    class SlowKube(FakeKube):
        def __init__(self) -> None:
            super().__init__()
            self.in_flight = self.most = 0

        async def patch_status(
            self, namespace: str, name: str, *, resource_version: str, status: dict[str, Any]
        ) -> str | None:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            return await super().patch_status(
                namespace, name, resource_version=resource_version, status=status
            )

    kube, store = SlowKube(), Store(stale=False)
    for i in range(200):
        role = llmrole(f"role-{i:03d}")
        store.roles.put(("team", role["metadata"]["name"]), 1, role)
    Secrets(store)["team", "creds"] = {"apiKey": KEY}
    reconciler = Reconciler(Settings(config_secret=("rolegate", "gw")), kube, store=store)
    started = time.monotonic()
    done = await reconciler.reconcile()
    assert (done.served, done.statuses_written, done.events_posted) == (200, 200, 400)
    assert kube.most == STATUS_WRITERS
    assert time.monotonic() - started < 200 * 0.01 / 2


async def test_an_older_operators_plain_config_secret_is_rewritten_gzipped_once(
    world: Any,
) -> None:
    reconciler, kube, _, _ = world
    await reconciler.reconcile()
    assert kube.secret is not None
    raw = secret_data.decode(kube.secret["data"])
    kube.secret["data"] = {secret_data.CONFIG_KEY: base64.b64encode(raw).decode()}
    assert (await reconciler.reconcile()).wrote_config
    assert list(kube.secret["data"]) == [secret_data.CONFIG_GZ_KEY]
    assert secret_data.decode(kube.secret["data"]) == raw
    assert not (await reconciler.reconcile()).wrote_config
