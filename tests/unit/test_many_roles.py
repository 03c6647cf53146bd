"""Many roles: what a config of thousands costs the gateway and the operator (no network).

The wire form is built once per config and per role; a role's upstream-error scrubber and
its latency histograms are made when first needed, not when the config is applied, so
applying thousands of roles with their own API keys takes a fraction of a second per
thousand instead of ~20 ms a role.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from rolegate_gateway import GatewayConfig, Runtime
from rolegate_gateway import config as config_module
from rolegate_gateway.config import ApiKey, key_digest
from tests.fakes.configs import role_config


def _config(count: int, **extra: object) -> GatewayConfig:
    roles = tuple(
        role_config(f"team-extract-{i:05d}", key="sk-proj-" + secrets.token_urlsafe(48))
        for i in range(count)
    )
    return GatewayConfig(roles=roles, **extra)  # type: ignore[arg-type]


def test_the_wire_form_is_the_canonical_json_of_the_whole_config() -> None:
    keys = (ApiKey(namespace="apps", name="k", sha256=key_digest("k" * 32), roles=("é",)),)
    for config in (GatewayConfig(), _config(3), _config(2, api_keys=keys)):
        data: dict[str, object] = {
            "version": config.version,
            "roles": [r.wire() for r in config.roles],
        }
        if config.api_keys:
            data["api_keys"] = [k.model_dump(mode="json", exclude_none=True) for k in keys]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        assert config.to_wire() == canonical
        again = GatewayConfig.from_wire(canonical)
        assert again == config
        assert again.hash == config.hash


async def test_a_thousand_roles_with_their_own_keys_apply_quickly_and_still_scrub() -> None:
    config = _config(1000)
    runtime = Runtime()
    started = time.perf_counter()
    assert runtime.apply(config).outcome == "applied"
    took_s = time.perf_counter() - started
    assert took_s < 5, f"{took_s:.1f} s (compiling every scrubber at apply took ~22 s)"
    role = config.roles[7]
    key = role.upstream.credentials.values()[0]
    wrapper = runtime.roles[role.name].wrapper
    echoed = json.dumps({"error": {"message": f"bad key {key}"}}).encode()
    assert key.encode() not in wrapper.scrub(echoed)
    runtime.close()


async def test_a_role_nobody_called_has_no_latency_series_until_its_first_answer() -> None:
    runtime = Runtime()
    runtime.apply(_config(2))
    name = next(iter(runtime.roles))

    def latency_series() -> list[str]:
        return [
            sample.name
            for family in runtime.registry.collect()
            if family.name == "rolegate_request_duration_seconds"
            for sample in family.samples
            if sample.labels.get("role") == name
        ]

    assert latency_series() == []
    runtime.roles[name].wrapper.metrics.request(200, 0.25)
    assert "rolegate_request_duration_seconds_count" in latency_series()
    runtime.close()


def test_a_changed_config_reuses_the_unchanged_roles_and_parses_as_a_fresh_one() -> None:
    served = GatewayConfig.from_wire(_config(50).to_wire())
    roles = list(served.roles)
    old = roles[7]
    roles[7] = old.model_copy(update={"upstream": old.upstream.model_copy(update={"model": "new"})})
    assert roles[7].hash != old.hash  # a copy does not keep the original's cached hash
    raw = GatewayConfig(roles=tuple(roles)).to_wire()
    fresh = GatewayConfig.from_wire(raw)
    reused = GatewayConfig.from_wire(raw, previous=served)
    assert reused == fresh
    assert reused.hash == fresh.hash
    assert reused.to_wire() == raw
    assert reused.roles[7].upstream.model == "new"
    assert all(reused.roles[i] is served.roles[i] for i in range(50) if i != 7)


def test_a_wire_not_in_canonical_form_is_still_parsed_right_with_a_previous_config() -> None:
    # The canonical wire's byte positions speed the reuse up; a wire with spaces, or with a
    # role left out as refused, must come out the same as a fresh parse.
    served = GatewayConfig.from_wire(_config(20).to_wire())
    data = json.loads(served.to_wire())
    data["roles"][3]["upstream"]["model"] = "new"
    data["roles"].insert(
        5,
        {
            **data["roles"][5],
            "name": "later",
            "upstream": {**data["roles"][5]["upstream"], "binding": "from-the-future"},
        },
    )
    wires = (
        json.dumps(data, indent=1).encode(),
        json.dumps(data, sort_keys=True).encode(),
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),  # canonical
    )
    for raw in wires:
        fresh = GatewayConfig.from_wire(raw)
        reused = GatewayConfig.from_wire(raw, previous=served)
        assert reused == fresh
        assert reused.hash == fresh.hash
        assert [r.name for r in reused.refused] == ["later"]
        assert reused.roles[3].upstream.model == "new"


def test_with_client_keys_too_an_unchanged_role_is_found_without_serialising_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An annotated key writes "roles":[...] before the config's own roles: the walk must
    # start after the api_keys, or every role is serialised again (~0.1 s at 5,000 roles).
    keys = (ApiKey(namespace="apps", name="k", sha256=key_digest("k" * 32), roles=("r",)),)
    served = GatewayConfig.from_wire(_config(40, api_keys=keys).to_wire())
    roles = list(served.roles)
    roles[9] = roles[9].model_copy(
        update={"upstream": roles[9].upstream.model_copy(update={"model": "new"})}
    )
    raw = GatewayConfig(roles=tuple(roles), api_keys=keys).to_wire()
    serialised: list[object] = []
    canonical = config_module._canonical

    def counting(data: object) -> bytes:
        serialised.append(data)
        return canonical(data)

    monkeypatch.setattr(config_module, "_canonical", counting)
    reused = GatewayConfig.from_wire(raw, previous=served)
    assert reused.roles[9].upstream.model == "new"
    assert all(reused.roles[i] is served.roles[i] for i in range(40) if i != 9)
    roles_serialised = [d for d in serialised if isinstance(d, dict) and "upstream" in d]
    assert len(roles_serialised) <= 2  # the changed role (and its own canonical form)
