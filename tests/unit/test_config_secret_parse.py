"""What the config Secret source hands the runtime, for each shape a Secret can have."""

from __future__ import annotations

import base64
from typing import Any

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import ConfigSecretSource
from tests.fakes.configs import role_config


class Sink:
    def __init__(self) -> None:
        self.applied: list[GatewayConfig] = []
        self.refused: list[str] = []

    def apply(self, config: GatewayConfig) -> object:
        self.applied.append(config)
        return None

    def source_failed(self, reason: str) -> None:
        pass

    def source_restarted(self) -> None:
        pass

    def refuse(self, reason: str, *, source: str) -> None:
        self.refused.append(reason)


def secret(data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "gw", "namespace": "rg"}, "data": data}


def encoded(raw: bytes) -> dict[str, str]:
    return {"config.json": base64.b64encode(raw).decode()}


def test_a_config_is_applied_once_and_bad_ones_refused_with_a_reason() -> None:
    sink = Sink()
    source = ConfigSecretSource("rg", "gw", sink)
    config = GatewayConfig(roles=(role_config("extract"),))

    assert source._hand_over(secret(encoded(config.to_wire()))) is True
    assert source._hand_over(secret(encoded(config.to_wire()))) is False  # same content
    assert sink.applied == [config]

    for data in ({}, {"config.json": "%%%"}, encoded(b'{"version": "v0"}')):
        assert source._hand_over(secret(data)) is False
    assert sink.refused == [
        "Secret rg/gw: no key 'config.json.gz' or 'config.json'",
        "Secret rg/gw: config.json is not base64: Only base64 data is allowed",
        "Secret rg/gw: gateway config version 'v0' is not 'rolegate.dev/gateway-config/v1'",
    ]
    assert sink.applied == [config]
