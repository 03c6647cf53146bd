"""The operator's renderers, without a cluster: config, conditions, Events, config Secret."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from rolegate_gateway import secret_data
from rolegate_gateway.api import Binding
from rolegate_gateway.config import GatewayConfig
from rolegate_gateway.kube import HASH_ANNOTATION
from rolegate_operator import render
from rolegate_operator.reconcile import role_object, secret_keys

KEY = "sk-RENDER-5a1e0c"
CS = "rolegate/gw-config"


def obj(
    name: str,
    namespace: str = "team",
    *,
    created: str = "2026-11-21T10:00:00Z",
    status: dict[str, Any] | None = None,
    generation: int = 1,
    **spec: Any,
) -> render.RoleObject:
    body = {"binding": "openai", "model": "gpt-4o-mini", **spec}
    return render.RoleObject(
        namespace, name, f"uid-{name}", generation, created, body, status or {}
    )


def with_secret(name: str = "creds") -> dict[str, Any]:
    return {"credentials": {"secretRef": {"name": name}}}


SECRETS = {("team", "creds"): {"apiKey": KEY}, ("team", "empty"): {}}


def outcome(rendered: render.Rendered, name: str, namespace: str = "team") -> render.Outcome:
    return next(
        o for o in rendered.outcomes if (o.role.namespace, o.role.name) == (namespace, name)
    )


def test_a_resolved_role_is_served_with_its_key() -> None:
    rendered = render.render([obj("extract", **with_secret())], SECRETS, config_secret=CS)
    out = outcome(rendered, "extract")
    assert (out.ready.status, out.ready.reason) == ("True", "Served")
    assert (out.credentials.status, out.credentials.reason) == ("True", "SecretResolved")
    assert CS in out.ready.message
    [role] = rendered.config.roles
    assert role.name == "extract"
    assert role.upstream.credentials.api_key is not None
    assert role.upstream.credentials.api_key.get_secret_value() == KEY
    assert out.endpoint == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("spec", "cred_reason", "ready_reason", "says"),
    [
        (with_secret("nope"), "SecretNotFound", "CredentialsNotResolved", "team/nope not found"),
        (with_secret("empty"), "KeyMissing", "CredentialsNotResolved", "no key 'apiKey'"),
        ({"maxAsync": 0}, "InvalidSpec", "InvalidSpec", "maxAsync"),
    ],
)
def test_a_role_with_a_problem_is_left_out_and_says_why(
    spec: dict[str, Any], cred_reason: str, ready_reason: str, says: str
) -> None:
    rendered = render.render(
        [obj("broken", **spec), obj("fine", **with_secret())], SECRETS, config_secret=CS
    )
    broken = outcome(rendered, "broken")
    assert broken.credentials.reason == cred_reason
    assert (broken.ready.status, broken.ready.reason) == ("False", ready_reason)
    assert says in broken.ready.message
    assert [r.name for r in rendered.config.roles] == ["fine"]
    assert broken.endpoint == ""


def test_of_two_roles_with_one_name_the_older_is_served() -> None:
    older = obj("extract", "a", created="2026-11-21T09:00:00Z")
    newer = obj("extract", "b", created="2026-11-21T10:00:00Z")
    rendered = render.render([newer, older], {}, config_secret=CS)
    assert [(r.name, r.namespace) for r in rendered.config.roles] == [("extract", "a")]
    dup = outcome(rendered, "extract", "b")
    assert (dup.ready.status, dup.ready.reason) == ("False", "DuplicateRole")
    assert "namespace 'a'" in dup.ready.message


def test_a_broken_older_role_keeps_its_name() -> None:
    older = obj("extract", "a", created="2026-11-21T09:00:00Z", **with_secret("nope"))
    newer = obj("extract", "team", created="2026-11-21T10:00:00Z", **with_secret())
    rendered = render.render([newer, older], SECRETS, config_secret=CS)
    assert rendered.config.roles == ()
    assert outcome(rendered, "extract", "a").ready.reason == "CredentialsNotResolved"
    assert outcome(rendered, "extract", "team").ready.reason == "DuplicateRole"


def test_roles_are_in_the_config_by_name_whatever_the_order_seen() -> None:
    objects = [obj(n, **with_secret()) for n in ("query", "extract", "summarize")]
    first = render.render(objects, SECRETS, config_secret=CS).config
    second = render.render(objects[::-1], SECRETS, config_secret=CS).config
    assert [r.name for r in first.roles] == ["extract", "query", "summarize"]
    assert first.to_wire() == second.to_wire()


def test_a_memo_carries_unchanged_roles_over_and_sees_every_change() -> None:
    memo = render.RenderMemo()
    secrets: dict[tuple[str, str], dict[str, str]] = {
        ("team", "creds"): {"apiKey": KEY},
        ("team", "other"): {"apiKey": KEY + "-other"},
    }
    roles = [
        obj("a", **with_secret()),
        obj("b", **with_secret("other")),
        obj("c", queue={"maxSize": 4}),
        obj("d"),
    ]

    def served(rendered: render.Rendered) -> dict[str, Any]:
        return {r.name: r for r in rendered.config.roles}

    first = served(render.render(roles, secrets, config_secret=CS, memo=memo))
    secrets["team", "creds"] = {"apiKey": KEY + "-rotated"}  # a rotated key
    roles[2] = obj("c", queue={"maxSize": 8}, status={"seen": 1})  # a nested spec change
    roles = roles[:3]  # d removed
    again = render.render(roles, secrets, config_secret=CS, memo=memo)
    second = served(again)
    # b did not change: the very same RoleConfig, so its cached wire bytes and hash stay
    assert second["b"] is first["b"]
    key = second["a"].upstream.credentials.api_key
    assert key is not None
    assert key.get_secret_value() == KEY + "-rotated"
    assert second["c"].limits.queue_max_size == 8
    assert set(second) == {"a", "b", "c"}
    assert set(memo.entries) == {("team", "a"), ("team", "b"), ("team", "c")}
    assert outcome(again, "c").role.status == {"seen": 1}  # the outcome holds this view
    # Its Secret deleted: seen too
    del secrets["team", "other"]
    gone = render.render(roles, secrets, config_secret=CS, memo=memo)
    assert outcome(gone, "b").credentials.reason == "SecretNotFound"
    assert set(served(gone)) == {"a", "c"}
    # true -> 1 is no change to Python's ==: the generation the API server bumped tells it
    render.render([obj("e", options={"logprobs": True})], secrets, config_secret=CS, memo=memo)
    edited = [obj("e", generation=2, options={"logprobs": 1})]
    [e] = render.render(edited, secrets, config_secret=CS, memo=memo).config.roles
    assert e.upstream.options == {"logprobs": 1}
    assert type(e.upstream.options["logprobs"]) is int


def test_status_of_an_unchanged_role_renders_equal_to_itself() -> None:
    rendered = render.render([obj("extract", **with_secret())], SECRETS, config_secret=CS)
    first = render.desired_status(rendered.outcomes[0], now="2026-11-21T10:00:00Z")
    again = render.render(
        [obj("extract", status=first, **with_secret())], SECRETS, config_secret=CS
    )
    second = render.desired_status(again.outcomes[0], now="2026-11-21T11:00:00Z")
    assert second == first
    assert render.transitions(first, second) == []


def test_last_transition_time_moves_only_when_status_flips() -> None:
    ready = render.desired_status(
        render.render([obj("r", **with_secret())], SECRETS, config_secret=CS).outcomes[0],
        now="2026-11-21T10:00:00Z",
    )
    broken = render.render(
        [obj("r", status=ready, generation=2, **with_secret("nope"))], SECRETS, config_secret=CS
    )
    after = render.desired_status(broken.outcomes[0], now="2026-11-21T11:00:00Z")
    conditions = {c["type"]: c for c in after["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["lastTransitionTime"] == "2026-11-21T11:00:00Z"
    assert conditions["Ready"]["observedGeneration"] == 2
    assert after["observedGeneration"] == 2
    assert after["configHash"] == ""
    changes = render.transitions(ready, after)
    assert sorted((c.condition, c.status, c.reason) for c in changes) == [
        ("CredentialsResolved", "False", "SecretNotFound"),
        ("Ready", "False", "CredentialsNotResolved"),
    ]
    assert all(c.warning for c in changes)


def test_config_hash_follows_the_key_and_hides_it() -> None:
    def status(key: str) -> dict[str, Any]:
        secrets = {("team", "creds"): {"apiKey": key}}
        out = render.render([obj("r", **with_secret())], secrets, config_secret=CS).outcomes[0]
        return render.desired_status(out, now="2026-11-21T10:00:00Z")

    assert status(KEY)["configHash"] != status(KEY + "x")["configHash"]
    assert KEY not in json.dumps(status(KEY))


def test_event_names_the_role_and_holds_no_key() -> None:
    role = obj("extract", **with_secret())
    change = render.Transition("Ready", "True", "Served", "served through the gateway config")
    body = render.event(role, change, now="2026-11-21T10:00:00.000001Z", instance="op-1")
    assert body["type"] == "Normal"
    assert body["regarding"] == {
        "apiVersion": "rolegate.dev/v1alpha1",
        "kind": "LLMRole",
        "namespace": "team",
        "name": "extract",
        "uid": "uid-extract",
    }
    assert body["metadata"]["generateName"] == "extract-"
    assert body["reason"] == "Served"


def test_a_rollout_under_way_is_a_normal_event_a_failure_a_warning() -> None:
    role = obj("extract", **with_secret())
    now = "2026-11-21T10:00:00.000001Z"
    rolling = render.Transition("Ready", "False", "RollingOut", "served by 2 of 3 replicas")
    broken = render.Transition("Ready", "False", "CredentialsNotResolved", "no Secret")
    assert render.event(role, rolling, now=now, instance="op-1")["type"] == "Normal"
    assert render.event(role, broken, now=now, instance="op-1")["type"] == "Warning"


def test_config_secret_holds_the_wire_config_and_its_hash() -> None:
    config = render.render([obj("extract", **with_secret())], SECRETS, config_secret=CS).config
    body = render.config_secret(config, namespace="rolegate", name="gw-config")
    assert list(body["data"]) == [secret_data.CONFIG_GZ_KEY]
    assert GatewayConfig.from_wire(secret_data.decode(body["data"])) == config
    assert body["metadata"]["annotations"][HASH_ANNOTATION] == config.hash


def test_config_secret_is_owned_by_the_service_account_given() -> None:
    config = render.render([obj("extract", **with_secret())], SECRETS, config_secret=CS).config
    plain = render.config_secret(config, namespace="n", name="c")
    assert "ownerReferences" not in plain["metadata"]
    body = render.config_secret(config, namespace="n", name="c", owner=("rg-operator", "u-1"))
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ServiceAccount", "name": "rg-operator", "uid": "u-1"}
    ]


def test_raw_objects_are_read_leniently() -> None:
    role = role_object(
        {
            "metadata": {"name": "x", "namespace": "n", "uid": "u", "generation": 3},
            "spec": {"credentials": {"secretRef": {"name": "s"}}},
        }
    )
    assert (role.generation, role.status, role.secret_ref()) == (3, {}, ("n", "s"))
    assert role_object({"metadata": {}, "spec": {"credentials": "bad"}}).secret_ref() is None
    encoded = base64.b64encode(KEY.encode()).decode()
    assert secret_keys({"data": {"apiKey": encoded, "other": encoded, "awsSessionToken": "%"}}) == {
        "apiKey": KEY
    }


def test_a_binding_the_gateway_lacks_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator built with a gateway package that lacks a binding (every binding is
    served today) leaves such roles out and says so."""
    monkeypatch.setattr(
        "rolegate_operator.render.config.SUPPORTED_BINDINGS", frozenset({Binding.OPENAI})
    )
    rendered = render.render(
        [obj("broken", binding="anthropic"), obj("fine", **with_secret())],
        SECRETS,
        config_secret=CS,
    )
    broken = next(o for o in rendered.outcomes if o.role.name == "broken")
    assert (broken.credentials.reason, broken.ready.reason) == (
        "BindingNotSupported",
        "BindingNotSupported",
    )
    assert "anthropic" in broken.ready.message
    assert [r.name for r in rendered.config.roles] == ["fine"]
