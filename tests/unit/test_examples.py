"""The manifests in examples/ are valid and mean what their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rolegate_gateway import load_manifests
from rolegate_gateway.api import LLMRole
from rolegate_gateway.config import MIN_API_KEY_CHARS
from rolegate_gateway.errors import ConfigError
from rolegate_operator import render
from rolegate_operator.render import backend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_lightrag_roles_load() -> None:
    config = load_manifests(EXAMPLES / "lightrag")
    roles = {r.name: r for r in config.roles}
    assert sorted(roles) == ["embed", "extract", "keyword", "query", "vlm"]
    assert all(r.upstream.base_url == "https://api.openai.com/v1" for r in roles.values())
    assert roles["extract"].limits.max_async == 8


def test_env_secret_overrides_the_placeholder() -> None:
    config = load_manifests(
        EXAMPLES / "lightrag", env_secrets=True, environ={"OPENAI_CREDS_API_KEY": "sk-from-env"}
    )
    assert {v for r in config.roles for v in r.upstream.credentials.values()} == {"sk-from-env"}


def test_local_roles_are_the_same_roles_on_the_demo_server() -> None:
    local = {r.name: r for r in load_manifests(EXAMPLES / "local").roles}
    remote = {r.name: r for r in load_manifests(EXAMPLES / "lightrag").roles}
    assert sorted(local) == sorted(remote)
    assert {r.upstream.base_url for r in local.values()} == {"http://127.0.0.1:8001/v1"}
    assert {n: r.upstream.model for n, r in local.items()} == {
        "embed": "tiny-embed",
        "extract": "tiny-a",
        "keyword": "tiny-a",
        "query": "tiny-a",
        "vlm": "tiny-a",
    }
    assert {v for r in local.values() for v in r.upstream.credentials.values()} == {"sk-local-demo"}
    for name, role in local.items():
        assert role.limits.max_async == remote[name].limits.max_async, name


def test_provider_roles_load_with_their_defaults() -> None:
    """The same five roles on the translated bindings: anthropic with its version and token
    budget, bedrock on the regional endpoint signed by the pod's identity (no Secret)."""
    roles = {r.name: r for r in load_manifests(EXAMPLES / "providers").roles}
    assert sorted(roles) == ["embed", "extract", "keyword", "query", "vlm"]
    query, vlm, extract = roles["query"].upstream, roles["vlm"].upstream, roles["extract"].upstream
    assert (query.binding, query.base_url) == ("anthropic", "https://api.anthropic.com")
    assert (vlm.anthropic_version, vlm.anthropic_max_tokens) == ("2023-06-01", 4096)
    assert extract.base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert extract.credentials.values() == []
    assert roles["embed"].upstream.model == "amazon.titan-embed-text-v2:0"


def test_gpu_roles_share_backends_as_their_comments_say() -> None:
    """examples/gpu/: three roles on one vLLM backend, the vision model on two GPUs of its
    own, the embedding model on Ollama without a GPU (rendered as the operator would)."""
    documents = list(yaml.safe_load_all((EXAMPLES / "gpu" / "roles.yaml").read_text()))
    objects = [
        render.RoleObject("team", d["metadata"]["name"], f"uid-{i}", 1, f"t{i}", d["spec"], {})
        for i, d in enumerate(documents)
    ]
    for document in documents:
        LLMRole.model_validate({**document, "metadata": {**document["metadata"]}})
    rendered = render.render(objects, {}, config_secret="ns/cfg", backends={})
    owners = {b.name: sorted(o.name for o in b.owners) for b in rendered.backends}
    assert sorted(owners.values()) == [["embed"], ["extract", "keyword", "query"], ["vlm"]]
    by_role = {o.role.name: o.backend for o in rendered.outcomes}
    vlm = next(b for b in rendered.backends if b.name == by_role["vlm"])
    args = backend.deployment(vlm)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--tensor-parallel-size", "2"]
    embed = next(b for b in rendered.backends if b.name == by_role["embed"])
    assert "resources" not in backend.deployment(embed)["spec"]["template"]["spec"]["containers"][0]
    with pytest.raises(ConfigError, match="run only by the operator"):
        load_manifests(EXAMPLES / "gpu")


def test_access_examples_grant_what_their_comments_say() -> None:
    """examples/access/: a RoleBinding to the chart's user ClusterRole, a Role that grants
    `use` on one role by name, and an API key Secret whose RoleBinding names the key's user
    (``rolegate:apikey:<namespace>:<name>``); the key is a placeholder of a valid length."""
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in sorted((EXAMPLES / "access").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
    }
    user_role = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rolegate-user",
    }
    assert docs["RoleBinding", "app-a-rolegate"]["roleRef"] == user_role
    assert docs["Role", "rolegate-use-extract"]["rules"] == [
        {
            "apiGroups": ["rolegate.dev"],
            "resources": ["llmroles"],
            "resourceNames": ["extract"],
            "verbs": ["use"],
        }
    ]
    assert docs["RoleBinding", "app-b-extract"]["roleRef"]["name"] == "rolegate-use-extract"
    secret = docs["Secret", "ci-pipeline"]
    assert secret["metadata"]["labels"] == {"rolegate.dev/api-key": "true"}
    assert secret["metadata"]["annotations"] == {"rolegate.dev/roles": "extract,query"}
    assert secret["stringData"]["apiKey"].startswith("REPLACE-ME")
    # Applied as it is, the placeholder must not be a working key anyone can read here.
    assert len(secret["stringData"]["apiKey"]) < MIN_API_KEY_CHARS
    binding = docs["RoleBinding", "ci-pipeline-rolegate"]
    assert binding["metadata"]["namespace"] == secret["metadata"]["namespace"]
    assert binding["roleRef"] == user_role
    assert binding["subjects"] == [
        {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": f"rolegate:apikey:{secret['metadata']['namespace']}:ci-pipeline",
        }
    ]
