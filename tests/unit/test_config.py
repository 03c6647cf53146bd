"""The gateway config's wire format: round trip with secrets, version check, duplicates."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from rolegate_gateway import ConfigError, GatewayConfig, Limits, RoleConfig, Upstream
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials


def _role(name: str, namespace: str = "default") -> RoleConfig:
    return RoleConfig(
        name=name,
        namespace=namespace,
        upstream=Upstream(
            binding=Binding.OPENAI,
            model="m",
            base_url="https://x/v1",
            timeout_s=3,
            credentials=Credentials(api_key=SecretStr("secret-k")),
        ),
        limits=Limits(max_async=2, queue_max_size=3, queue_max_wait_s=4),
    )


def test_wire_round_trip_keeps_credentials() -> None:
    config = GatewayConfig(roles=(_role("a"), _role("b")))
    again = GatewayConfig.from_wire(config.to_wire())
    assert again == config
    assert again.hash == config.hash
    assert again.roles[0].upstream.credentials.values() == ["secret-k"]


def test_wrong_version_and_garbage_are_refused() -> None:
    with pytest.raises(ConfigError, match="version 'v0'"):
        GatewayConfig.from_wire(b'{"version": "v0", "roles": []}')
    with pytest.raises(ConfigError, match="not JSON"):
        GatewayConfig.from_wire(b"{")


def test_duplicate_role_across_namespaces() -> None:
    with pytest.raises(ValidationError) as err:
        GatewayConfig(roles=(_role("a"), _role("a", "other")))
    assert (
        "duplicate role 'a': defined in namespace 'default' and in namespace 'other'; "
        "role names must be unique across namespaces"
    ) in str(err.value)
    with pytest.raises(ValidationError, match="'a': defined twice in namespace 'default'; role"):
        GatewayConfig(roles=(_role("a"), _role("a")))
