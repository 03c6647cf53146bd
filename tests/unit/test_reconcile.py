"""The reconcile pass against a recording stand-in for the API: what it writes, and when not.

The real API server runs in tests/integration/test_operator.py; here the stand-in lets a
test fail one write on purpose and hold the operator's view stale, which a real server
does not do on demand.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from rolegate_operator.apply import Kube
from rolegate_operator.reconcile import Reconciler
from rolegate_operator.settings import Settings

KEY = "sk-RECONCILE-77aa"


class FakeKube(Kube):
    """Records writes; ``fail`` names writes to refuse with HTTP 500 (once each)."""

    def __init__(self) -> None:
        self.writes = {"secret": 0, "status": 0, "event": 0}
        self.secret: dict[str, Any] | None = None
        self.statuses: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.fail: set[str] = set()

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
        self, namespace: str, name: str, uid: str, status: dict[str, Any]
    ) -> bool:
        self._maybe_fail(f"status/{name}")
        self.statuses[name] = status
        self.writes["status"] += 1
        return True

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


@pytest.fixture
def world() -> tuple[Reconciler, FakeKube, list[dict[str, Any]], dict[Any, dict[str, str]]]:
    kube = FakeKube()
    roles = [llmrole("extract"), llmrole("query")]
    secrets = {("team", "creds"): {"apiKey": KEY}}
    settings = Settings(config_secret=("rolegate", "gw-config"))
    reconciler = Reconciler(settings, kube, roles=lambda: roles, secrets=lambda: secrets)
    return reconciler, kube, roles, secrets


def see_own_writes(kube: FakeKube, roles: list[dict[str, Any]]) -> None:
    """What the watch delivers later: the statuses written, in the operator's view."""
    for role in roles:
        role["status"] = kube.statuses.get(role["metadata"]["name"], role["status"])


async def test_first_pass_writes_config_statuses_and_events_then_nothing(world: Any) -> None:
    reconciler, kube, roles, _ = world
    first = await reconciler.reconcile()
    assert (first.served, first.wrote_config, first.statuses_written) == (2, True, 2)
    assert len(kube.events) == 4  # Ready and CredentialsResolved of each role
    assert KEY in base64.b64decode(kube.secret["data"]["config.json"]).decode()

    # The watch has not caught up yet: a status may be sent again, but the same one (no
    # lastTransitionTime stamped anew) and no Event repeats.
    written = copy.deepcopy(kube.statuses)
    await asyncio.sleep(1.1)  # a later second, in case anything were stamped anew
    again = await reconciler.reconcile()
    assert again.wrote_config is False
    assert kube.statuses == written
    assert len(kube.events) == 4

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
    assert all(c["status"] == "True" for s in kube.statuses.values() for c in s["conditions"])


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
