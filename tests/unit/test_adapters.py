"""Adapters address and shape upstream requests per binding (no network)."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from rolegate_gateway import ConfigError, Upstream
from rolegate_gateway.adapters import Endpoint, make_adapter
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials
from rolegate_gateway.intake import Payload


def _upstream(binding: Binding, **kw: object) -> Upstream:
    fields: dict[str, object] = {
        "binding": binding,
        "model": "m1",
        "base_url": "https://up.example/v1",
        "timeout_s": 5,
        "credentials": Credentials(api_key=SecretStr("k")),
    }
    return Upstream.model_validate({**fields, **kw})


@pytest.mark.parametrize("binding", [Binding.OPENAI, Binding.VLLM, Binding.OLLAMA])
def test_openai_compatible(binding: Binding) -> None:
    adapter = make_adapter(_upstream(binding, options={"temperature": 0.1, "top_p": 0.5}))
    req = adapter.request(
        Endpoint.CHAT_COMPLETIONS,
        Payload.of({"model": "role", "messages": [], "temperature": 0.9}),
    )
    assert req.url == "https://up.example/v1/chat/completions"
    assert req.headers["Authorization"] == "Bearer k"
    assert json.loads(req.body) == {"model": "m1", "messages": [], "temperature": 0.9, "top_p": 0.5}


def test_no_key_no_auth_header() -> None:
    adapter = make_adapter(_upstream(Binding.OLLAMA, credentials=Credentials()))
    assert (
        "Authorization"
        not in adapter.request(Endpoint.EMBEDDINGS, Payload.of({"model": "r"})).headers
    )


def test_azure_url_and_api_key_header() -> None:
    adapter = make_adapter(
        _upstream(
            Binding.AZURE_OPENAI,
            base_url="https://res.openai.azure.com",
            azure_deployment="gpt4o",
            azure_api_version="2024-10-21",
        )
    )
    req = adapter.request(Endpoint.EMBEDDINGS, Payload.of({"model": "role", "input": "x"}))
    assert req.url == (
        "https://res.openai.azure.com/openai/deployments/gpt4o/embeddings?api-version=2024-10-21"
    )
    assert req.headers["api-key"] == "k"
    assert "Authorization" not in req.headers


def test_unsupported_binding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="anthropic is not supported"):
        make_adapter(_upstream(Binding.ANTHROPIC))
