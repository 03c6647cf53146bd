"""The Helm chart's files agree with each other and with the project: its version is the
project's, every value is declared in values.schema.json (which refuses unknown keys in our
blocks) and documented in the README's table, and the README's can-i blocks are well formed.
No helm binary needed: tests/integration/test_chart*.py render and install the chart."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.chart import (
    CHART,
    CI_VALUES,
    README,
    documented_can_i,
    schema_leaves,
    table_values,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def _declared(schema: dict[str, Any], values: dict[str, Any], at: str = "") -> list[str]:
    """Dotted names of the keys in ``values`` that ``schema`` does not declare."""
    missing = []
    for key, value in values.items():
        node = schema.get("properties", {}).get(key)
        if node is None:
            missing.append(f"{at}{key}")
        elif "properties" in node and isinstance(value, dict):
            missing += _declared(node, value, f"{at}{key}.")
    return missing


def _objects(schema: dict[str, Any], at: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(at or "<root>", schema)] if "properties" in schema else []
    for name, node in schema.get("properties", {}).items():
        out += _objects(node, f"{at}{name}." if at else f"{name}.")
    return out


def test_chart_version_and_app_version_are_the_projects() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (chart["apiVersion"], chart["type"]) == ("v2", "application")
    assert chart["version"] == project
    assert chart["appVersion"] == project
    assert "dependencies" not in chart


def test_every_default_value_is_declared_in_the_schema() -> None:
    assert _declared(SCHEMA, VALUES) == []


@pytest.mark.parametrize("name", CI_VALUES)
def test_every_ci_value_is_declared_in_the_schema(name: str) -> None:
    values = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    assert _declared(SCHEMA, values) == []


def test_our_blocks_refuse_unknown_keys() -> None:
    open_blocks = [
        at for at, node in _objects(SCHEMA) if node.get("additionalProperties") is not False
    ]
    assert open_blocks == []


def test_readme_table_lists_every_schema_leaf_once_in_order() -> None:
    table = table_values(README.read_text())
    assert len(table) == len(set(table)), "a value is in the table twice"
    assert table == list(schema_leaves(SCHEMA))


def test_every_schema_leaf_has_a_description() -> None:
    def node(path: str) -> dict[str, Any]:
        found = SCHEMA
        for part in path.split("."):
            found = found["properties"][part]
        return found

    assert [leaf for leaf in schema_leaves(SCHEMA) if not node(leaf).get("description")] == []


def test_enums_and_bounds_a_user_would_hit() -> None:
    gateway = SCHEMA["properties"]["gateway"]["properties"]
    assert gateway["replicas"]["minimum"] == 1
    assert gateway["service"]["properties"]["type"]["enum"] == [
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
    ]
    assert SCHEMA["properties"]["operator"]["properties"]["logLevel"]["enum"] == [
        "debug",
        "info",
        "warning",
        "error",
    ]
    assert SCHEMA["properties"]["image"]["properties"]["pullPolicy"]["enum"] == [
        "Always",
        "IfNotPresent",
        "Never",
    ]


def test_access_control_is_on_by_default() -> None:
    """gateway.auth: Kubernetes tokens and RBAC unless a user says none; the flags' own
    defaults; a ClusterRole `rolegate-user` to bind; no per-client metric series."""
    assert VALUES["gateway"]["auth"] == {
        "mode": "kubernetes",
        "tokenAudience": "rolegate",
        "tokenTTL": 60,
        "allowedTTL": 30,
        "deniedTTL": 5,
        "userClusterRole": {"create": True, "name": "rolegate-user"},
    }
    assert VALUES["gateway"]["metrics"] == {"clientLabel": False}
    auth = SCHEMA["properties"]["gateway"]["properties"]["auth"]["properties"]
    # keys (a standalone gateway's annotation-scoped API keys) is not for the chart: in a
    # cluster RBAC decides, API key Secrets included.
    assert sorted(auth["mode"]["enum"]) == ["kubernetes", "none"]
    # The gateway's --auth-*-ttl flags refuse 0 (a pod given one would crash-loop), so the
    # schema does too (helm's refusal: test_chart_access.py).
    for ttl in ("tokenTTL", "allowedTTL", "deniedTTL"):
        assert (auth[ttl].get("exclusiveMinimum"), auth[ttl].get("minimum")) == (0, None), ttl


def test_readme_documents_each_can_i_case() -> None:
    blocks = documented_can_i(README.read_text())
    assert sorted(blocks) == [
        "everyone",
        "gateway-elsewhere",
        "gateway-list-release",
        "gateway-release",
        "gateway-watched",
        "operator-all-release",
        "operator-default-release",
        "operator-list-release",
        "operator-watched",
    ]
    # The gateway may read one Secret, by name, keep Leases in the release namespace (its
    # own and its peers'), list and watch EndpointSlices where the roles are (their
    # backends' pods), and, everywhere (system:auth-delegator), ask who a token is and
    # whether it may use a role; nothing else.
    secret = ("secrets", "[]", "[rolegate-gateway-config]", ("get", "list", "watch"))
    verbs = ("create", "delete", "get", "list", "update")
    leases = ("leases.coordination.k8s.io", "[]", "[]", verbs)
    config = [secret, leases]
    slices = ("endpointslices.discovery.k8s.io", "[]", "[]", ("list", "watch"))
    reviews = [
        ("subjectaccessreviews.authorization.k8s.io", "[]", "[]", ("create",)),
        ("tokenreviews.authentication.k8s.io", "[]", "[]", ("create",)),
    ]
    assert blocks["gateway-elsewhere"] == reviews
    assert blocks["gateway-list-release"] == sorted([*config, *reviews])
    assert blocks["gateway-watched"] == sorted([slices, *reviews])
    assert blocks["gateway-release"] == sorted([slices, *config, *reviews])
    # The operator renews its leader Lease by name and reads the gateways' everywhere it
    # watches.
    held = ("leases.coordination.k8s.io", "[]", "[rolegate-operator]", ("get", "update"))
    assert held in blocks["operator-default-release"]
    assert ("leases.coordination.k8s.io", "[]", "[]", ("list", "watch")) in blocks[
        "operator-watched"
    ]
    # Nobody gets namespaces or CRDs.
    for rows in blocks.values():
        assert not [r for r in rows if r[0].startswith(("namespaces", "customresourcedefinitions"))]
