"""The manifests in examples/ are valid and mean what their comments say."""

from __future__ import annotations

from pathlib import Path

from rolegate_gateway import load_manifests

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_lightrag_roles_load() -> None:
    config = load_manifests(EXAMPLES)
    roles = {r.name: r for r in config.roles}
    assert sorted(roles) == ["extract", "keyword", "query", "vlm"]
    assert all(r.upstream.base_url == "https://api.openai.com/v1" for r in roles.values())
    assert roles["extract"].limits.max_async == 8


def test_env_secret_overrides_the_placeholder() -> None:
    config = load_manifests(
        EXAMPLES, env_secrets=True, environ={"OPENAI_CREDS_API_KEY": "sk-from-env"}
    )
    assert {v for r in config.roles for v in r.upstream.credentials.values()} == {"sk-from-env"}
