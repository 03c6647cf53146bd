"""Client access decisions (rolegate_gateway.auth.access) against a scripted reviewer: the
modes, the caches and their expiry, one review for concurrent requests, failing closed."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from rolegate_gateway import errors
from rolegate_gateway.auth import access as access_module
from rolegate_gateway.auth.access import Access, bearer_token, token_expiry
from rolegate_gateway.config import ApiKey, GatewayConfig, key_digest
from tests.fakes.configs import role_config
from tests.fakes.reviewer import APP_A, Reviewer

KEY = "rk-" + "k" * 30


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jwt(**claims: object) -> str:
    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


EXTRACT = role_config("extract").model_copy(update={"namespace": "team-a"})
QUERY = role_config("query").model_copy(update={"namespace": "team-a"})


def kube_access(reviewer: Reviewer, clock: Clock, **kw: float) -> tuple[Access, list[str]]:
    results: list[str] = []
    access = Access(
        "kubernetes",
        reviewer=reviewer,
        clock=clock,
        wall=lambda: clock.now,
        count=results.append,
        **kw,
    )
    return access, results


def test_bearer_token_and_jwt_expiry() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) is None
    assert bearer_token({"Authorization": "Bearer "}) is None
    assert bearer_token({}) is None
    assert token_expiry(jwt(exp=1234)) == 1234.0
    assert token_expiry(jwt(sub="x")) is None
    assert token_expiry(jwt(exp=True)) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.c") is None


async def test_open_access_asks_nothing() -> None:
    access = Access()
    assert not access.enabled
    assert await access.identify({}) is None
    await access.authorize(None, EXTRACT)
    assert await access.visible(None, [QUERY, EXTRACT]) == ["extract", "query"]


async def test_kubernetes_identity_and_rbac_decide() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, results = kube_access(reviewer, clock)
    identity = await access.identify(headers("good"))
    assert identity == APP_A
    await access.authorize(identity, EXTRACT)
    with pytest.raises(errors.PermissionDenied) as denied:
        await access.authorize(identity, QUERY)
    assert denied.value.status == 403
    assert "system:serviceaccount:team-a:app-a" in denied.value.message
    assert "'query'" in denied.value.message
    assert await access.visible(identity, [QUERY, EXTRACT]) == ["extract"]
    assert results == ["allowed", "denied"]


@pytest.mark.parametrize("token", [None, "garbage"])
async def test_no_token_or_a_refused_one_is_401(token: str | None) -> None:
    reviewer, clock = Reviewer(), Clock()
    access, results = kube_access(reviewer, clock)
    with pytest.raises(errors.Unauthenticated) as refused:
        await access.identify(headers(token))
    assert refused.value.status == 401
    assert refused.value.code == "invalid_api_key"
    assert results == ["unauthenticated"]
    assert reviewer.token_calls == (0 if token is None else 1)


async def test_token_reviews_are_cached_until_ttl_or_the_tokens_expiry() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, _ = kube_access(reviewer, clock, token_ttl_s=60)
    short = jwt(exp=clock.now + 10)  # expires before the TTL
    reviewer.tokens[short] = APP_A
    for _ in range(5):
        assert await access.identify(headers("good")) == APP_A
        assert await access.identify(headers(short)) == APP_A
    assert reviewer.token_calls == 2
    clock.now += 9.5
    assert await access.identify(headers(short)) == APP_A  # still cached, still valid
    clock.now += 1  # past the short token's exp: refused here, though the API server (whose
    with pytest.raises(errors.Unauthenticated, match="expired"):  # leeway is 60 s) accepts it
        await access.identify(headers(short))
    await access.identify(headers("good"))
    assert reviewer.token_calls == 2
    clock.now += 50  # past the TTL
    await access.identify(headers("good"))
    assert reviewer.token_calls == 3


async def test_refused_tokens_and_denials_are_cached_briefly() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, _ = kube_access(reviewer, clock, denied_ttl_s=5, allowed_ttl_s=30)
    for _ in range(3):
        with pytest.raises(errors.Unauthenticated):
            await access.identify(headers("garbage"))
        with pytest.raises(errors.PermissionDenied):
            await access.authorize(APP_A, QUERY)
    assert (reviewer.token_calls, reviewer.access_calls) == (1, 1)
    reviewer.grants.add((APP_A.user, "team-a", "query"))  # a RoleBinding made
    clock.now += 5.1
    await access.authorize(APP_A, QUERY)  # seen once the denial expired
    reviewer.grants.clear()  # the RoleBinding deleted: the allowing answer lasts its TTL
    clock.now += 29
    await access.authorize(APP_A, QUERY)
    clock.now += 1.1
    with pytest.raises(errors.PermissionDenied):
        await access.authorize(APP_A, QUERY)


async def test_concurrent_requests_share_one_review() -> None:
    reviewer, clock = Reviewer(), Clock()
    reviewer.gate = asyncio.Event()
    access, _ = kube_access(reviewer, clock)
    waiting = [asyncio.create_task(access.identify(headers("good"))) for _ in range(50)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # the request that started the review goes away: the rest still get it
    reviewer.gate.set()
    answers = await asyncio.gather(*waiting[1:])
    assert answers == [APP_A] * 49
    assert reviewer.token_calls == 1


async def test_fails_closed_when_the_api_server_is_unreachable() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, results = kube_access(reviewer, clock, token_ttl_s=60, allowed_ttl_s=30)
    await access.authorize(await access.identify(headers("good")), EXTRACT)
    reviewer.down = True
    clock.now += 20  # cached decisions still hold
    await access.authorize(await access.identify(headers("good")), EXTRACT)
    with pytest.raises(errors.AuthUnavailable) as unknown:  # never reviewed: not let through
        await access.identify(headers("new-token"))
    assert unknown.value.status == 503
    assert unknown.value.headers["Retry-After"] == "5"
    with pytest.raises(errors.AuthUnavailable):  # a decision never made: not let through
        await access.authorize(APP_A, QUERY)
    clock.now += 11  # the allowing decision expired
    with pytest.raises(errors.AuthUnavailable):
        await access.authorize(APP_A, EXTRACT)
    assert results.count("unavailable") == 3
    reviewer.down = False
    with pytest.raises(errors.AuthUnavailable):  # no review for a second after a failed one
        await access.authorize(APP_A, EXTRACT)
    clock.now += 1
    await access.authorize(APP_A, EXTRACT)


async def test_a_hanging_api_server_holds_one_request_not_every_one() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, _ = kube_access(reviewer, clock)
    reviewer.down = True
    with pytest.raises(errors.AuthUnavailable):
        await access.identify(headers("first"))
    for n in range(5):  # new clients within a second of the failure: 503 without a review
        with pytest.raises(errors.AuthUnavailable):
            await access.identify(headers(f"other-{n}"))
    assert reviewer.token_calls == 1
    clock.now += 1
    with pytest.raises(errors.AuthUnavailable):
        await access.identify(headers("later"))
    assert reviewer.token_calls == 2


async def test_api_keys_are_identities_that_rbac_authorises() -> None:
    reviewer, clock = Reviewer(), Clock()
    access, _ = kube_access(reviewer, clock)
    key = ApiKey(namespace="team-a", name="ci", sha256=key_digest(KEY))
    access.sync(GatewayConfig(api_keys=(key,)))
    identity = await access.identify(headers(KEY))
    assert identity is not None
    assert (identity.user, identity.groups) == ("rolegate:apikey:team-a:ci", ("rolegate:apikeys",))
    assert reviewer.token_calls == 0  # a key never goes to the API server
    with pytest.raises(errors.PermissionDenied):
        await access.authorize(identity, EXTRACT)
    reviewer.grants.add(("rolegate:apikey:team-a:ci", "team-a", "query"))
    await access.authorize(identity, QUERY)
    access.sync(GatewayConfig())  # revoked: the next request is a token for the API server
    with pytest.raises(errors.Unauthenticated):
        await access.identify(headers(KEY))


async def test_keys_mode_allows_what_the_annotation_names() -> None:
    access = Access("keys")
    keys = (
        ApiKey(namespace="d", name="one", sha256=key_digest(KEY), roles=("extract",)),
        ApiKey(namespace="d", name="all", sha256=key_digest(KEY + "2"), roles=("*",)),
        ApiKey(namespace="d", name="bare", sha256=key_digest(KEY + "3")),
    )
    access.sync(GatewayConfig(api_keys=keys))
    one, every, bare = [await access.identify(headers(k)) for k in (KEY, KEY + "2", KEY + "3")]
    await access.authorize(one, EXTRACT)
    with pytest.raises(errors.PermissionDenied) as denied:
        await access.authorize(one, QUERY)
    assert "rolegate.dev/roles" in denied.value.message
    await access.authorize(every, QUERY)
    assert await access.visible(bare, [EXTRACT, QUERY]) == []
    with pytest.raises(errors.Unauthenticated):
        await access.identify(headers("good"))  # no Kubernetes tokens in this mode


def test_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown auth mode"):
        Access("ldap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reviewer"):
        Access("kubernetes")


async def test_garbage_tokens_are_bounded_and_evict_no_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_module, "MAX_REFUSED", 10)
    reviewer, clock = Reviewer(), Clock()
    access, _ = kube_access(reviewer, clock)
    access.tokens._max = 10
    assert await access.identify(headers("good")) == APP_A
    for n in range(25):
        with pytest.raises(errors.Unauthenticated):
            await access.identify(headers(f"garbage-{n}"))
    assert len(access._refused) <= 10
    assert await access.identify(headers("good")) == APP_A
    assert reviewer.token_calls == 26  # good once, each garbage token once


@pytest.mark.parametrize(
    "token",
    [
        "t\u00e9l\u00e9phone",  # not ASCII
        "x." + base64.urlsafe_b64encode(b'{"exp": 1' + b"0" * 400 + b"}").decode() + ".s",
        "x." + base64.urlsafe_b64encode(b"[" * 5000).decode() + ".s",
    ],
)
async def test_odd_tokens_are_401_not_errors(token: str) -> None:
    reviewer, clock = Reviewer(), Clock()
    access, results = kube_access(reviewer, clock)
    with pytest.raises(errors.Unauthenticated):
        await access.identify(headers(token.encode().decode("unicode_escape")))
    assert results == ["unauthenticated"]


def test_the_benchmark_measures_both_cached_paths() -> None:
    from bench.access import cached_path_us

    cost = cached_path_us(EXTRACT, calls=20)
    assert set(cost) == {"keys", "kubernetes"}
    assert all(0 < us < 10_000 for us in cost.values())


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "x"])
def test_ttl_flags_must_be_positive_and_finite(value: str) -> None:
    from rolegate_gateway import cli

    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--manifests", ".", "--auth-allowed-ttl", value])
    args = cli.parser().parse_args(["--manifests", ".", "--auth", "keys", "--auth-denied-ttl", "2"])
    assert (args.auth, args.auth_denied_ttl) == ("keys", 2.0)
