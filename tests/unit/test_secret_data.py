"""The config Secret's data: gzipped, read back, the plain key of an older operator still
read, and a config past what a Secret holds refused before it is written."""

from __future__ import annotations

import base64
import gzip
import secrets

import pytest

from rolegate_gateway import errors, secret_data
from rolegate_gateway.api import ConditionStatus
from rolegate_gateway.config import GatewayConfig
from rolegate_operator import render
from tests.fakes.configs import role_config


def config(count: int, *, key_bytes: int = 48) -> GatewayConfig:
    """``count`` roles, each with its own random (incompressible) API key."""
    roles = tuple(
        role_config(
            f"team-{i % 8}-extract-{i:05d}", key="sk-proj-" + secrets.token_urlsafe(key_bytes)
        )
        for i in range(count)
    )
    return GatewayConfig(roles=roles)


def test_the_config_is_gzipped_deterministically_and_decodes_to_the_wire_bytes() -> None:
    cfg = config(50)
    data = secret_data.encode(cfg.to_wire())
    assert list(data) == [secret_data.CONFIG_GZ_KEY]
    assert secret_data.encode(cfg.to_wire()) == data  # equal configs, equal bytes: no rewrite
    assert secret_data.decode(data) == cfg.to_wire()
    assert GatewayConfig.from_wire(secret_data.decode(data)) == cfg
    packed = base64.b64decode(data[secret_data.CONFIG_GZ_KEY])
    assert secret_data.stored_bytes(data) == len(packed)


def test_an_older_operators_plain_key_is_read_and_the_gzipped_one_wins() -> None:
    old, new = config(1).to_wire(), config(2).to_wire()
    plain = {secret_data.CONFIG_KEY: base64.b64encode(old).decode()}
    assert secret_data.decode(plain) == old
    assert secret_data.decode({**plain, **secret_data.encode(new)}) == new


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no key 'config.json.gz' or 'config.json'"),
        ({"config.json.gz": "%%%"}, "config.json.gz is not base64"),
        ({"config.json.gz": base64.b64encode(b"{}").decode()}, "config.json.gz is not gzip"),
        (
            {"config.json.gz": base64.b64encode(gzip.compress(b"{}" * 100)[:-12]).decode()},
            "config.json.gz is not gzip",
        ),
    ],
)
def test_what_is_not_a_config_is_a_config_error(data: dict[str, str], message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        secret_data.decode(data)


def test_a_gzip_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_data, "MAX_CONFIG_BYTES", 1000)
    data = {"config.json.gz": base64.b64encode(gzip.compress(b" " * 5000)).decode()}
    with pytest.raises(errors.ConfigError, match="more than 1000 bytes"):
        secret_data.decode(data)


def test_ten_thousand_roles_with_random_keys_fit_one_secret_with_room() -> None:
    cfg = config(10_000)
    body = render.config_secret(cfg, namespace="rg", name="gw")
    raw, stored = len(cfg.to_wire()), secret_data.stored_bytes(body["data"])
    assert raw > 3 * secret_data.SECRET_MAX_BYTES  # plain JSON would not fit
    assert stored < secret_data.SECRET_MAX_BYTES * 0.6
    assert render.oversize(body, roles=10_000) is None


def test_past_a_secrets_size_every_served_role_is_told_why() -> None:
    cfg = config(5_000, key_bytes=256)  # ~260 incompressible bytes a role
    body = render.config_secret(cfg, namespace="rg", name="gw")
    check = render.oversize(body, roles=5_000)
    assert check is not None
    assert (check.status, check.reason) == (ConditionStatus.FALSE, "ConfigTooLarge")
    assert "of 5000 roles is" in check.message
    assert "keeps serving its previous config" in check.message
