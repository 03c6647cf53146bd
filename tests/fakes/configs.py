"""Builders of gateway configs for tests that skip manifests (the runtime, config sources)."""

from __future__ import annotations

from pydantic import SecretStr

from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials, Limits, RoleConfig, Upstream


def role_config(
    name: str,
    *,
    model: str = "m",
    max_async: int = 2,
    base_url: str = "http://127.0.0.1:9/v1",
    key: str = "sk-TESTCONFIG-1",
) -> RoleConfig:
    """An openai-binding role with a key, a 3 s timeout and a small queue."""
    return RoleConfig(
        name=name,
        upstream=Upstream(
            binding=Binding.OPENAI,
            model=model,
            base_url=base_url,
            timeout_s=3,
            credentials=Credentials(api_key=SecretStr(key)),
        ),
        limits=Limits(max_async=max_async, queue_max_size=5, queue_max_wait_s=1),
    )
