"""Loading LLMRole and Secret manifests into a gateway config, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegate_gateway import ConfigError, load_manifests
from rolegate_gateway.manifests import env_var_name
from tests.fakes import manifests as m


def test_directory_of_multi_document_yaml(tmp_path: Path) -> None:
    m.write(
        tmp_path / "a.yaml",
        m.role(
            "extract",
            binding="openai",
            model="gpt-4o-mini",
            credentials={"secretRef": {"name": "creds"}},
        ),
        m.secret("creds", apiKey="k1"),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
    )
    (tmp_path / "sub").mkdir()
    m.write(
        tmp_path / "sub" / "b.yml",
        m.role(
            "query",
            host="http://vllm:8000",
            namespace="ml",
            credentials={"secretRef": {"name": "plain"}},
        ),
        m.secret("plain", "ml", encoded=False, apiKey="k2"),
    )
    (tmp_path / "notes.txt").write_text("not yaml: [")
    config = load_manifests(tmp_path)
    roles = {r.name: r for r in config.roles}
    assert roles["extract"].upstream.base_url == "https://api.openai.com/v1"
    assert roles["extract"].upstream.credentials.api_key is not None
    assert roles["extract"].upstream.credentials.api_key.get_secret_value() == "k1"
    assert roles["query"].upstream.base_url == "http://vllm:8000/v1"  # /v1 added
    assert roles["query"].namespace == "ml"
    assert roles["query"].upstream.credentials.values() == ["k2"]


def test_hash_changes_with_a_rotated_key(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    role = m.role("x", binding="openai", credentials={"secretRef": {"name": "c"}})
    m.write(path, role, m.secret("c", apiKey="first-key-value"))
    first = load_manifests(path).hash
    m.write(path, role, m.secret("c", apiKey="two-key-value"))
    assert load_manifests(path).hash != first
    assert "two-key-value" not in repr(load_manifests(path))


@pytest.mark.parametrize(
    ("docs", "fragments"),
    [
        (
            [m.role("x", binding="openai", maxAsync=0)],
            ["r.yaml (document 1, LLMRole default/x)", "spec.maxAsync", "greater than or equal"],
        ),
        (
            [m.role("x", binding="openai", credentials={"secretRef": {"name": "gone"}})],
            ["LLMRole default/x", "Secret default/gone not found"],
        ),
        (
            [
                m.role("x", binding="openai", credentials={"secretRef": {"name": "c"}}),
                m.secret("c", other="v"),
            ],
            ["LLMRole default/x", "has no key 'apiKey'"],
        ),
        (
            [m.role("x", binding="openai"), m.role("x", binding="openai", namespace="other")],
            ["duplicate role 'x'", "'default'", "'other'"],
        ),
        (
            [{**m.role("x"), "apiVersion": "rolegate.dev/v9"}],
            ["apiVersion 'rolegate.dev/v9'"],
        ),
        (
            [m.role("x", binding="ollama", serve={"image": "ollama/ollama"})],
            ["LLMRole default/x", "spec.host is required"],
        ),
    ],
)
def test_errors_name_file_kind_name_and_field(
    tmp_path: Path, docs: list[dict[str, object]], fragments: list[str]
) -> None:
    m.write(tmp_path / "r.yaml", *docs)
    with pytest.raises(ConfigError) as err:
        load_manifests(tmp_path / "r.yaml")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_yaml_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(ConfigError, match=r"bad.yaml: cannot read YAML"):
        load_manifests(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load_manifests(tmp_path / "nope")


def test_env_secrets_supply_and_override_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    m.write(
        path, m.role("x", binding="openai", credentials={"secretRef": {"name": "openai-creds"}})
    )
    env = {"OPENAI_CREDS_API_KEY": "from-env"}
    with pytest.raises(ConfigError, match="no environment variable OPENAI_CREDS_API_KEY"):
        load_manifests(path, env_secrets=True, environ={})
    config = load_manifests(path, env_secrets=True, environ=env)
    assert config.roles[0].upstream.credentials.values() == ["from-env"]
    with pytest.raises(ConfigError, match="not found"):
        load_manifests(path, env_secrets=False, environ=env)  # only when asked for


def test_env_var_name() -> None:
    assert env_var_name("openai-creds", "apiKey") == "OPENAI_CREDS_API_KEY"
    assert env_var_name("aws", "awsSecretAccessKey") == "AWS_AWS_SECRET_ACCESS_KEY"
