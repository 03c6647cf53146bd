"""The chart beyond one replica, as ``helm template`` renders it: the operator's leader
election (flags, strategy, the Lease's RBAC), the gateway replicas' own Leases and their
PodDisruptionBudget, and the concurrency store (an external URL, a Secret holding it, or
the chart's own Valkey). The flags' behaviour is tested where the processes run:
test_operator_ha.py, test_rollout_status.py, test_global_slots.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chart import (
    RENDER_NS,
    by_kind,
    container,
    deployment_command,
    named,
    render,
)

# Needs the pinned helm that `python -m devstack build k8s` builds.
pytestmark = pytest.mark.cluster

NS = RENDER_NS
VALKEY = "rolegate-valkey"
POD_NAME = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
POD_UID = {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}


def flag(command: list[str], name: str) -> str | None:
    """The value after ``name`` in ``command``, or None when the flag is absent."""
    return command[command.index(name) + 1] if name in command else None


def env(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A Deployment's first container's environment, by name."""
    return {e["name"]: e for e in container(doc)["env"]}


def test_one_operator_leads_through_a_lease_by_default(chart: Any) -> None:
    docs = chart()
    operator = named(docs, "Deployment", "rolegate-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    command = deployment_command(docs, "operator")
    assert "--leader-elect" in command
    assert flag(command, "--leader-election-namespace") == NS
    assert flag(command, "--leader-election-lease-name") == "rolegate-operator"
    assert [
        flag(command, f) for f in ("--lease-duration", "--renew-deadline", "--retry-period")
    ] == [
        "15",
        "10",
        "2",
    ]
    assert "--await-gateways" in command
    # The pod's name is the Lease holder's identity (the operator's and each gateway's); a
    # gateway's Lease is owned by its pod (uid).
    for component in ("rolegate-operator", "rolegate-gateway"):
        assert env(named(docs, "Deployment", component))["POD_NAME"] == POD_NAME
    assert env(named(docs, "Deployment", "rolegate-gateway"))["POD_UID"] == POD_UID
    rules = named(docs, "Role", "rolegate-operator-config")["rules"]
    leases = [r for r in rules if r["apiGroups"] == ["coordination.k8s.io"]]
    assert leases == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rolegate-operator"],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch"],
        },
    ]


def test_standby_operators_roll_one_at_a_time(chart: Any) -> None:
    docs = chart("operator.replicas=3", "operator.leaderElection.leaseDuration=30")
    spec = named(docs, "Deployment", "rolegate-operator")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert flag(deployment_command(docs, "operator"), "--lease-duration") == "30"


def test_election_and_awaiting_gateways_can_be_turned_off(chart: Any) -> None:
    docs = chart("operator.leaderElection.enabled=false", "operator.awaitGateways=false")
    command = deployment_command(docs, "operator")
    assert "--no-leader-elect" in command
    assert "--no-await-gateways" in command
    assert "--leader-elect" not in command
    assert "--lease-duration" not in command


def test_gateway_replicas_get_a_disruption_budget_and_their_share(chart: Any) -> None:
    single = chart()
    assert by_kind(single, "PodDisruptionBudget") == []
    command = deployment_command(single, "gateway")
    assert flag(command, "--fallback-replicas") == "1"
    assert flag(command, "--presence-lease-duration") == "10"
    assert flag(command, "--presence-renew") == "3"
    # Each replica on its own.
    assert "--concurrency-slot-ttl" not in command
    assert "ROLEGATE_CONCURRENCY_STORE" not in env(named(single, "Deployment", "rolegate-gateway"))
    assert by_kind(single, "StatefulSet") == []

    three = chart("gateway.replicas=3")
    assert flag(deployment_command(three, "gateway"), "--fallback-replicas") == "3"
    pdb = named(three, "PodDisruptionBudget", "rolegate-gateway")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert (
        by_kind(chart("gateway.replicas=3", "gateway.pdb.enabled=false"), "PodDisruptionBudget")
        == []
    )


def test_the_charts_own_valkey_holds_the_slots(chart: Any) -> None:
    docs = chart(values=("ha-values.yaml",))
    command = deployment_command(docs, "gateway")
    # The URL reaches the gateway as the flag's default, its environment variable.
    assert "--concurrency-store" not in command
    assert flag(command, "--concurrency-slot-ttl") == "5"
    assert flag(command, "--fallback-replicas") == "3"
    gateway = named(docs, "Deployment", "rolegate-gateway")
    assert env(gateway)["ROLEGATE_CONCURRENCY_STORE"]["value"] == (
        f"redis://{VALKEY}.{NS}.svc:6379/0"
    )
    valkey = named(docs, "StatefulSet", VALKEY)
    pod = valkey["spec"]["template"]["spec"]
    assert valkey["spec"]["replicas"] == 1
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    box = pod["containers"][0]
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    # In memory: no snapshot, no append-only file.
    assert box["command"][box["command"].index("--save") + 1] == ""
    assert box["command"][box["command"].index("--appendonly") + 1] == "no"
    service = named(docs, "Service", VALKEY)
    assert service["spec"]["ports"][0]["port"] == 6379
    policy = named(docs, "NetworkPolicy", VALKEY)
    assert policy["spec"]["ingress"][0]["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "rolegate",
                    "app.kubernetes.io/instance": "rolegate",
                    "app.kubernetes.io/component": "gateway",
                }
            }
        }
    ]


def test_an_external_store_url_stays_in_its_secret(chart: Any) -> None:
    docs = chart(
        "concurrency.store.existingSecret.name=slots", "concurrency.store.existingSecret.key=u"
    )
    assert env(named(docs, "Deployment", "rolegate-gateway"))["ROLEGATE_CONCURRENCY_STORE"] == {
        "name": "ROLEGATE_CONCURRENCY_STORE",
        "valueFrom": {"secretKeyRef": {"name": "slots", "key": "u"}},
    }
    assert by_kind(docs, "StatefulSet") == []
    plain = chart("concurrency.store.url=redis://slots.example:6379/2")
    gateway = named(plain, "Deployment", "rolegate-gateway")
    assert env(gateway)["ROLEGATE_CONCURRENCY_STORE"]["value"] == "redis://slots.example:6379/2"
    assert "redis://slots.example:6379/2" not in deployment_command(plain, "gateway")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["operator.replicas=2", "operator.leaderElection.enabled=false"],
            "operator.replicas > 1 needs operator.leaderElection.enabled",
        ),
        (
            ["operator.leaderElection.renewDeadline=20"],
            "retryPeriod < renewDeadline < leaseDuration",
        ),
        (["gateway.presenceRenew=10"], "gateway.presenceRenew must be shorter"),
        (
            ["concurrency.store.url=redis://a:1", "concurrency.store.existingSecret.name=s"],
            "set url or existingSecret.name, not both",
        ),
        (
            ["concurrency.store.url=redis://a:1", "concurrency.valkey.enabled=true"],
            "valkey.enabled runs a store of the chart's own",
        ),
        (
            ["concurrency.store.url=http://a:1"],
            "at '/concurrency/store/url': 'http://a:1' does not match pattern",
        ),
        (["operator.replicas=0"], "at '/operator/replicas': minimum: got 0, want 1"),
    ],
)
def test_bad_values_are_refused_with_a_message(
    k8s_bin_dir: Path, helm_home: Path, sets: list[str], message: str
) -> None:
    done = render(k8s_bin_dir, helm_home, sets=sets, check=False)
    assert done.returncode != 0
    assert message in done.stderr
