"""Loading LLMRole and Secret manifests into a gateway config, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rolegate_gateway import ConfigError, load_manifests, manifests
from rolegate_gateway.manifests import env_var_name
from tests.fakes import manifests as m

SECRET = "sk-SECRET-0123456789abcdef"
_HEAD = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: c\nstringData:\n"

#: PyYAML's pure-Python loader quotes the bad line in its error; libyaml's does not, but
#: both quote tags, and the pure one aliases and anchors, in their problem phrases.
LOADERS = [
    pytest.param(yaml.SafeLoader, id="SafeLoader"),
    pytest.param(
        getattr(yaml, "CSafeLoader", None),
        id="CSafeLoader",
        marks=pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="no libyaml"),
    ),
]


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
            [
                "duplicate role 'x': ",
                "r.yaml (document 1, LLMRole default/x) and ",
                "r.yaml (document 2, LLMRole other/x); role names are unique across namespaces",
            ],
        ),
        (
            [{**m.role("x"), "apiVersion": "rolegate.dev/v9"}],
            ["apiVersion 'rolegate.dev/v9'"],
        ),
        (
            [m.role("x", binding="ollama", serve={"image": "ollama/ollama"})],
            ["LLMRole default/x", "spec.host is required", "run only by the operator"],
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
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML: .* at line 1, column 7"):
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


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            f'{_HEAD}  apiKey: "{SECRET}\n  other: x\n',
            ["quoted scalar at line 6, column 11", "end of stream at line 8, column 1"],
            id="unterminated-quote",
        ),
        pytest.param(
            f"{_HEAD}  other: x\n\tapiKey: {SECRET}\n",
            ["at line 7, column 1"],
            id="tab-indent",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: {SECRET}: :\n",
            ["mapping values are not allowed", "at line 6, column"],
            id="mapping-values",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: !{SECRET} x\n",
            ["could not determine a constructor for the tag at line 6, column 11"],
            id="unknown-tag",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: *{SECRET}\n",
            ["found undefined alias at line 6, column 11"],
            id="undefined-alias",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: &{SECRET} a\n  other: &{SECRET} b\n",
            ["found duplicate anchor; first occurrence at line 6, column 11", "line 7"],
            id="duplicate-anchor",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: {SECRET}\x01\n",
            ["unacceptable character #x0001 at line 6, column 37"],
            id="control-character",
        ),
        pytest.param(
            f"{_HEAD}  apiKey: !!int {SECRET}\n",
            ["(document 1): invalid YAML: a value cannot be converted"],
            id="bad-int",
        ),
    ],
)
def test_a_yaml_error_names_the_place_never_the_text(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loader: type[yaml.SafeLoader],
    text: str,
    fragments: list[str],
) -> None:
    monkeypatch.setattr(manifests, "_YAML_LOADER", loader)
    (tmp_path / "creds.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_manifests(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'creds.yaml'}")
    for fragment in fragments:
        assert fragment in message
    assert "SECRET" not in message
    assert err.value.__cause__ is None  # a traceback would print PyYAML's own text
    assert err.value.__suppress_context__


def test_a_file_that_is_not_utf8_is_named_not_quoted(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_bytes(f"{_HEAD}  apiKey: \xff{SECRET}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_manifests(tmp_path)
    assert str(err.value) == f"{tmp_path / 'r.yaml'}: not UTF-8 text: invalid byte at line 6"


def test_a_duplicate_role_names_both_files(tmp_path: Path) -> None:
    m.write(tmp_path / "a.yaml", m.role("x", binding="openai"))
    m.write(
        tmp_path / "b.yaml",
        m.role("y", binding="openai"),
        m.role("x", binding="openai", namespace="ml"),
        m.role("y", binding="openai", namespace="ml"),
    )
    with pytest.raises(ConfigError) as err:
        load_manifests(tmp_path)
    assert str(err.value) == (
        f"duplicate role 'x': {tmp_path / 'a.yaml'} (document 1, LLMRole default/x) and "
        f"{tmp_path / 'b.yaml'} (document 2, LLMRole ml/x); role names are unique across "
        "namespaces; also duplicated: 'y'"
    )


def test_the_two_example_sets_together_name_both_files() -> None:
    examples = Path(__file__).parents[2] / "examples"
    with pytest.raises(ConfigError) as err:
        load_manifests(examples)
    message = str(err.value)
    assert message.startswith("duplicate role 'embed': ")
    assert f"{examples / 'gpu' / 'roles.yaml'} (document 5, LLMRole default/embed)" in message
    assert f"{examples / 'lightrag' / 'roles.yaml'} (document 1, LLMRole default/embed)" in message
    assert "also duplicated: 'extract'" in message
