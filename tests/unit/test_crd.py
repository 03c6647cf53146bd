"""The generated CRD: in sync with crds/ and with the Helm chart's template, structural,
defaults and rules that agree with the pydantic model; and the ``rolegate-operator`` command
line that prints it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from rolegate_gateway.api import LLMRole, LLMRoleSpec
from rolegate_operator import cli
from rolegate_operator.crd import HEADER, HELM_HEADER, RULES, crd, helm_template
from tests.llmrole_cases import ACCEPTED, REFUSED, Refused, manifest, pruned

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "llmroles.rolegate.dev.yaml"
HELM_CRD_FILE = ROOT / "helm" / "rolegate" / "templates" / "crds" / "llmroles.rolegate.dev.yaml"


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


def _defaulted(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does it."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, child in schema["properties"].items():
        if name not in out and "default" in child:
            out[name] = child["default"]
        if name in out:
            out[name] = _defaulted(child, out[name])
    return out


# -- the file and the command ----------------------------------------------------------------


def test_committed_file_is_what_rolegate_operator_crd_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["crd"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(HEADER)
    assert yaml.safe_load(printed) == crd()
    assert CRD_FILE.read_text() == printed, "crds/ is stale: run `make crd` and commit it"


def test_chart_template_is_what_rolegate_operator_crd_helm_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["crd", "--helm"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(HELM_HEADER)
    assert HELM_CRD_FILE.read_text() == printed, (
        "helm/rolegate/templates/crds/ is stale: run `make crd` and commit it"
    )


def test_chart_template_is_the_crd_behind_the_install_and_keep_values() -> None:
    lines = helm_template().splitlines()
    assert lines[1] == "{{- if .Values.crds.install }}"
    assert lines[-1] == "{{- end }}"
    keep = lines.index("  {{- if .Values.crds.keep }}")
    assert lines[keep + 1 : keep + 4] == [
        "  annotations:",
        "    helm.sh/resource-policy: keep",
        "  {{- end }}",
    ]
    # Without its template lines it is the CRD itself (helm template renders the labels).
    plain = yaml.safe_load("\n".join(line for line in lines if "{{" not in line))
    assert {k: v for k, v in plain.items() if k != "metadata"} == {
        k: v for k, v in crd().items() if k != "metadata"
    }
    assert plain["metadata"] == {
        "name": "llmroles.rolegate.dev",
        "labels": None,
        "annotations": {"helm.sh/resource-policy": "keep"},
    }


def test_a_crd_with_template_braces_is_refused() -> None:
    doc = crd()
    doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "{{ oops }}"
    with pytest.raises(ValueError, match="template action"):
        helm_template(doc)


def test_names_scope_and_version() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "llmroles.rolegate.dev"
    assert (spec["group"], spec["scope"]) == ("rolegate.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "LLMRole",
        "listKind": "LLMRoleList",
        "plural": "llmroles",
        "singular": "llmrole",
        "shortNames": ["llmr"],
        "categories": ["rolegate"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


# -- structural schema -----------------------------------------------------------------------


def test_every_node_is_structural() -> None:
    for path, node in _nodes(_schema()):
        typed = "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True
        assert typed, f"{path or '<root>'} has no type"
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "nullable"} & set(node)
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("exclusiveMinimum", True) is True, f"{path}: OpenAPI v3.0 form"


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    undocumented = [
        path
        for path, node in _nodes(_schema()["properties"]["spec"], "spec")
        if path.count(".") and not path.endswith(("[]", ".*")) and not node.get("description")
    ]
    assert undocumented == []


def test_enums_and_bounds_come_from_the_model() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["binding"]["enum"] == [
        "openai",
        "azure_openai",
        "anthropic",
        "bedrock",
        "ollama",
        "vllm",
    ]
    assert spec["maxAsync"] == {
        "type": "integer",
        "description": spec["maxAsync"]["description"],
        "default": 4,
        "minimum": 1,
    }
    assert (spec["timeoutSeconds"]["minimum"], spec["timeoutSeconds"]["exclusiveMinimum"]) == (
        0,
        True,
    )
    condition = _schema()["properties"]["status"]["properties"]["conditions"]
    assert condition["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_crd_defaults_match_the_model_defaults(case: str) -> None:
    spec_schema = _schema()["properties"]["spec"]
    model = LLMRoleSpec.model_validate(ACCEPTED[case]).model_dump(by_alias=True, mode="json")
    assert pruned(_defaulted(spec_schema, ACCEPTED[case])) == pruned(model)


def test_defaults_of_a_minimal_role() -> None:
    spec = _defaulted(_schema()["properties"]["spec"], {"binding": "openai", "model": "m"})
    assert spec == {
        "binding": "openai",
        "model": "m",
        "maxAsync": 4,
        "timeoutSeconds": 180,
        "queue": {"maxSize": 1000, "maxWaitSeconds": 60},
        "credentials": {},
    }


# -- the rules, and their agreement with the model ------------------------------------------


def test_every_cel_rule_has_a_refused_case() -> None:
    assert {r.name for r in RULES} == {c.rule for c in REFUSED if c.rule}


def test_cel_messages_are_the_models_own_words() -> None:
    for case in REFUSED:
        rule = next((r for r in RULES if r.name == case.rule), None)
        if rule is not None and case.pydantic is not None and rule.at == "spec":
            assert case.pydantic in case.apiserver
            if rule.message_expression is None:
                assert case.pydantic == rule.message


@pytest.mark.parametrize("case", [c for c in REFUSED if c.pydantic], ids=lambda c: c.id)
def test_model_refuses_what_the_crd_refuses(case: Refused) -> None:
    with pytest.raises(ValidationError) as refused:
        LLMRole.model_validate(manifest(case.name, case.spec))
    assert case.pydantic is not None
    assert case.pydantic in str(refused.value)


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_model_accepts_what_the_crd_accepts(case: str) -> None:
    LLMRole.model_validate(manifest(case, ACCEPTED[case]))


def test_printer_columns() -> None:
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c.get("priority", 0)) for c in columns] == [
        ("Binding", "string", 0),
        ("Model", "string", 0),
        ("MaxAsync", "integer", 0),
        ("Ready", "string", 0),
        ("Upstream", "string", 0),
        ("Reason", "string", 1),
        ("Backend", "string", 1),
        ("Age", "date", 0),
    ]


# -- the command line ------------------------------------------------------------------------


def test_run_defaults() -> None:
    args = cli.parser().parse_args(
        ["run", "--all-namespaces", "--gateway-config-secret", "rolegate/gateway-config"]
    )
    assert vars(args) == {
        "command": "run",
        "namespace": None,
        "all_namespaces": True,
        "kubeconfig": None,
        "gateway_config_secret": "rolegate/gateway-config",
        "config_owner": None,
        "liveness": "127.0.0.1:8081",
        "resync_interval": 60.0,
        "backend_release_delay": 390.0,
        "await_gateways": True,
        "log_level": "info",
        "log_format": "text",
        "leader_elect": True,
        "leader_election_namespace": None,
        "leader_election_lease_name": "rolegate-operator",
        "lease_duration": 15.0,
        "renew_deadline": 10.0,
        "retry_period": 2.0,
    }


def test_run_flags() -> None:
    args = cli.parser().parse_args(
        [
            "run",
            "--namespace=a",
            "--namespace=b",
            "--gateway-config-secret=rg/cfg.v1",
            "--liveness=0.0.0.0:9000",
            "--resync-interval=30",
            "--log-level=debug",
            "--log-format=json",
            "--config-owner-service-account=rg-operator",
        ]
    )
    assert (args.namespace, args.liveness, args.resync_interval) == (["a", "b"], "0.0.0.0:9000", 30)
    assert (args.log_level, args.log_format) == ("debug", "json")
    assert args.config_owner == "rg-operator"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["run"], "the following arguments are required: --gateway-config-secret"),
        (
            ["run", "--gateway-config-secret=a/b"],
            "one of the arguments --namespace --all-namespaces is required",
        ),
        (["run", "-A", "--gateway-config-secret=cfg"], "'cfg': expected NAMESPACE/NAME"),
        (["run", "-A", "--gateway-config-secret=a/b", "--liveness=8081"], "expected HOST:PORT"),
        (["run", "-A", "--gateway-config-secret=a/b", "--resync-interval=0"], "positive number"),
        (
            ["run", "--gateway-config-secret=a/b", "--namespace=a", "--all-namespaces"],
            "not allowed with argument --namespace",
        ),
        (["run", "-A", "--gateway-config-secret=a/b", "--log-format=xml"], "invalid choice: 'xml'"),
        (["run", "--namespace=team-*", "--gateway-config-secret=a/b"], "a namespace name"),
        (["crd", "--yaml"], "unrecognized arguments: --yaml"),
        (
            ["run", "-A", "--gateway-config-secret=a/b", "--config-owner-service-account=Op"],
            "'Op': expected an object name",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert error in capsys.readouterr().err
