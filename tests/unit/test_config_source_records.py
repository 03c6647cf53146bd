"""The config Secret source records content as handed over only once the sink accepted it:
refused content, or a sink that raised, is handed over again by the next list."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pytest

from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import ConfigSecretSource
from tests.fakes.configs import role_config


@dataclass
class Report:
    outcome: str


class Sink:
    """Answers each apply with the next outcome of ``outcomes`` ("raise": raises)."""

    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.applied = 0

    def apply(self, config: GatewayConfig) -> object:
        self.applied += 1
        outcome = self.outcomes.pop(0)
        if outcome == "raise":
            raise RuntimeError("wrapper construction failed")
        return Report(outcome)

    def source_failed(self, reason: str) -> None:
        pass

    def source_restarted(self) -> None:
        pass

    def refuse(self, reason: str, *, source: str) -> None:
        raise AssertionError(reason)


def secret(config: GatewayConfig) -> dict[str, Any]:
    encoded = base64.b64encode(config.to_wire()).decode()
    return {"metadata": {"name": "gw", "namespace": "rg"}, "data": {"config.json": encoded}}


def test_refused_or_failed_content_is_handed_over_again() -> None:
    sink = Sink("refused", "raise", "applied", "unchanged")
    source = ConfigSecretSource("rg", "gw", sink)
    body = secret(GatewayConfig(roles=(role_config("extract"),)))

    assert source._hand_over(body) is False  # refused: not recorded
    with pytest.raises(RuntimeError):
        source._hand_over(body)  # the sink raised: not recorded
    assert source._hand_over(body) is True  # accepted, recorded
    assert source._hand_over(body) is False  # the same content: not handed over again
    assert sink.applied == 3
