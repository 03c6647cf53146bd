"""The public surface of the gateway package is what __all__ says, and it all resolves."""

from __future__ import annotations

import rolegate_gateway


def test_public_surface() -> None:
    assert sorted(rolegate_gateway.__all__) == sorted(
        [
            "API_VERSION",
            "Binding",
            "ConfigError",
            "GatewayConfig",
            "GatewayError",
            "LLMRole",
            "LLMRoleSpec",
            "Limits",
            "ManifestsSource",
            "ReloadReport",
            "RoleConfig",
            "Runtime",
            "Upstream",
            "create_app",
            "load_manifests",
            "start",
        ]
    )
    for name in rolegate_gateway.__all__:
        assert getattr(rolegate_gateway, name) is not None
