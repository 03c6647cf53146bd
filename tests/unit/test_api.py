"""LLMRole validation: the rules a user can get wrong, with messages naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rolegate_gateway.api import Binding, LLMRole, LLMRoleSpec


def _spec(**fields: Any) -> LLMRoleSpec:
    return LLMRoleSpec.model_validate(fields)


def test_defaults_and_camel_case() -> None:
    spec = _spec(binding="openai", model="gpt-4o-mini", maxAsync=8, queue={"maxWaitSeconds": 5})
    assert spec.binding is Binding.OPENAI
    assert spec.max_async == 8
    assert spec.timeout_seconds == 180
    assert spec.queue.max_size == 1000
    assert spec.queue.max_wait_seconds == 5
    assert spec.model_dump(by_alias=True)["maxAsync"] == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"binding": "openai", "model": "m", "maxAsync": 0}, "maxAsync"),
        ({"binding": "openai", "model": ""}, "model"),
        ({"binding": "gemini", "model": "m"}, "binding"),
        ({"binding": "openai", "model": "m", "host": "ftp://x"}, "host"),
        ({"binding": "openai", "model": "m", "timeoutSeconds": 0}, "timeoutSeconds"),
        ({"binding": "openai", "model": "m", "maxasync": 2}, "maxasync"),
        ({"binding": "vllm", "model": "m"}, "host is required for binding vllm"),
        ({"binding": "openai", "model": "m", "serve": {"image": "x"}}, "serve is only allowed"),
        ({"binding": "azure_openai", "model": "m", "host": "https://a"}, "azure.deployment"),
        (
            {"binding": "azure_openai", "model": "m", "azure": {"deployment": "d"}},
            "host (the Azure resource endpoint)",
        ),
        ({"binding": "bedrock", "model": "m"}, "bedrock.region is required"),
        ({"binding": "openai", "model": "m", "options": {"model": "x"}}, "may not set model"),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        _spec(**fields)
    assert message in str(err.value)


def test_serve_without_host_is_valid_for_vllm() -> None:
    spec = _spec(binding="vllm", model="m", serve={"image": "vllm/vllm-openai:v0.9"})
    assert spec.serve is not None
    assert spec.serve.gpu_resource == "nvidia.com/gpu"


def test_role_name_must_be_a_dns_label() -> None:
    with pytest.raises(ValidationError, match=r"metadata\.name"):
        LLMRole.model_validate(
            {
                "apiVersion": "rolegate.dev/v1alpha1",
                "kind": "LLMRole",
                "metadata": {"name": "Not_Valid"},
                "spec": {"binding": "openai", "model": "m"},
            }
        )
