"""Who may call which role, decided by Kubernetes RBAC: the gateway (``--auth kubernetes``)
as a process with its own ServiceAccount, clients with ServiceAccount tokens, on a real API
server.

Every test runs the operator and the gateway on this module's own control plane (its audit
log counts the gateway's TokenReviews and SubjectAccessReviews), on a
:class:`~tests.fixtures.access.Scene`: roles ``extract`` and ``query`` on one fake upstream
that records what it receives, ``app-a`` bound to ``extract``, ``app-b`` to nothing. On exit,
:func:`~tests.fixtures.access.access_stack` checks that no token leaked into the gateway's
log (debug), ``/status``, ``/metrics`` or an answer, and that no process is left. Times and
counts are printed (``pytest -s``). API keys: ``test_access_keys.py``.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from devstack.poll import wait_until
from tests.fixtures.access import (
    HI,
    SLACK_S,
    Scene,
    access_plane,
    assert_counted,
    assert_error,
    poll,
    sdk,
    serving,
    world,
)
from tests.fixtures.identities import (
    AUDIENCE,
    gateway_identity,
    grant,
    mint,
    reviews,
    sign,
    token_kubeconfig,
    token_review,
    utc_now,
)

__all__ = ["access_plane", "world"]  # the fixtures, for pytest

pytestmark = pytest.mark.cluster


async def test_a_bound_service_account_uses_its_role_and_no_other(world: Scene) -> None:
    a, b = world.tokens["app-a"], world.tokens["app-b"]
    async with serving(world) as acc:
        async with sdk(acc, a) as client:
            reply = await client.chat.completions.create(model="extract", messages=HI)
            stream = await client.chat.completions.create(model="extract", messages=HI, stream=True)
            chunks = [c async for c in stream]
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await client.chat.completions.create(model="query", messages=HI)
        assert reply.choices[0].message.content == "hi from up"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        acc.caller.bodies.append(denied.value.response.text)
        assert denied.value.code == "permission_denied"

        refused = await acc.caller.chat(a, "query")
        assert_error(refused, 403, "permission_denied")
        assert "query" in refused.error["message"]
        assert world.user("app-a") in refused.error["message"]
        assert_error(await acc.caller.chat(a, "query", stream=True), 403, "permission_denied")
        assert_error(await acc.caller.chat(b, "extract"), 403, "permission_denied")
        assert await acc.caller.models(a) == ["extract"]
        assert await acc.caller.models(b) == []
        assert (await acc.caller.call("GET", "/v1/models/extract", a)).status == 200
        assert_error(await acc.caller.call("GET", "/v1/models/query", a), 403, "permission_denied")
        assert_error(
            await acc.caller.call("GET", "/v1/models/extract", b), 403, "permission_denied"
        )
        assert_error(
            await acc.caller.call("GET", "/v1/models/extract", None), 401, "invalid_api_key"
        )
        # An unknown role's 404 names only the roles the caller may use.
        unknown = await acc.caller.chat(a, "nosuchrole")
        assert unknown.status == 404, unknown
        assert "extract" in unknown.error["message"]
        assert "query" not in unknown.error["message"]
        unknown = await acc.caller.chat(b, "nosuchrole")
        assert unknown.status == 404, unknown
        assert "extract" not in unknown.error["message"]

        for path in ("/v1/completions", "/v1/embeddings"):  # every endpoint is gated
            assert (await acc.caller.post(path, a, "extract")).status == 200
            assert_error(await acc.caller.post(path, a, "query"), 403, "permission_denied")
            assert_error(await acc.caller.post(path, b, "extract"), 403, "permission_denied")
            assert_error(await acc.caller.post(path, None, "extract"), 401, "invalid_api_key")

        assert world.upstream_problems(allowed=2 + acc.caller.answered) == []
        await assert_counted(acc, allowed=2, denied=1)


async def test_no_garbage_expired_or_foreign_token_passes(world: Scene) -> None:
    """The expired token is one this test signs with the API server's own key: the same
    made to expire in ten minutes passes the API server's TokenReview and the gateway, so
    only its expiry refuses the other."""
    ns, uid = world.ns, world.uids["app-a"]
    fresh = sign(ns.plane, namespace=ns.name, account="app-a", uid=uid, expires_in_s=600)
    expired = sign(ns.plane, namespace=ns.name, account="app-a", uid=uid, expires_in_s=-600)
    # The API server's TokenReview still takes a token up to 60 s past its exp (go-jose's
    # leeway); the gateway knows the exp, and an expired token is expired.
    lately = sign(ns.plane, namespace=ns.name, account="app-a", uid=uid, expires_in_s=-20)
    review = token_review(ns.plane, fresh, [AUDIENCE])
    assert review.get("authenticated") is True, review
    assert review["user"]["username"] == world.user("app-a")
    assert "expired" in token_review(ns.plane, expired, [AUDIENCE]).get("error", "")
    bad = {
        "garbage": "not-a-token-at-all-0123456789",
        "a JWT-shaped forgery": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX19f",
        "the expired token": expired,
        "a token expired 20 s ago": lately,
        "a token for audience other": mint(
            ns.plane, namespace=ns.name, account="app-a", audiences=["other"]
        ),
    }
    async with serving(world) as acc:
        acc.secrets |= {"the self-signed token": fresh, **bad}
        assert (await acc.caller.chat(fresh, "extract")).status == 200
        assert_error(await acc.caller.chat(None, "extract"), 401, "invalid_api_key")
        assert_error(await acc.caller.call("GET", "/v1/models", None), 401, "invalid_api_key")
        for what, token in bad.items():
            for answer in (
                await acc.caller.chat(token, "extract"),
                await acc.caller.chat(token, "extract", stream=True),
                await acc.caller.call("GET", "/v1/models", token),
            ):
                assert answer.status == 401, (what, answer)
                assert answer.error["code"] == "invalid_api_key", (what, answer)
        async with sdk(acc, bad["garbage"]) as client:
            with pytest.raises(openai.AuthenticationError) as refused:
                await client.chat.completions.create(model="extract", messages=HI)
        acc.caller.bodies.append(refused.value.response.text)
        assert refused.value.code == "invalid_api_key"
        assert world.upstream_problems(allowed=1) == []
        await assert_counted(acc, unauthenticated=1)


async def test_deleted_rolebindings_and_service_accounts_refuse_within_the_ttls(
    world: Scene,
) -> None:
    allowed_ttl, denied_ttl, token_ttl = 2.0, 1.0, 2.0
    a = world.tokens["app-a"]
    ttls = ["--auth-allowed-ttl", f"{allowed_ttl:g}", "--auth-denied-ttl", f"{denied_ttl:g}"]
    ttls += ["--auth-token-ttl", f"{token_ttl:g}"]
    async with serving(world, *ttls) as acc:
        assert (await acc.caller.chat(a, "extract")).status == 200
        await world.ns.run("delete", "rolebinding", "use-sa-app-a")
        deleted = time.monotonic()
        gone = await poll(acc, a, "extract", until=403, timeout_s=15)
        to_403 = time.monotonic() - deleted
        await world.ns.apply(*grant(world.ns, "sa:app-a", ["extract"]))
        recreated = time.monotonic()
        back = await poll(acc, a, "extract", until=200, timeout_s=15)
        to_200 = time.monotonic() - recreated
        print(
            f"\n403 {to_403:.2f} s after the RoleBinding's deletion (TTLs {allowed_ttl:g} + "
            f"{denied_ttl:g} s); 200 again {to_200:.2f} s after it came back"
        )
        assert {x.status for x in gone} <= {200, 403}, gone
        assert {x.status for x in back} <= {200, 403}, back
        assert gone[-1].error["code"] == "permission_denied"
        assert to_403 <= allowed_ttl + denied_ttl + SLACK_S
        assert to_200 <= denied_ttl + SLACK_S

        # The ServiceAccount deleted, its tokens are no longer valid. The API server itself
        # caches a token's authentication for 10 s: the gateway's cached TokenReview must
        # expire within --auth-token-ttl of the API server's own answer changing.
        await world.ns.run("delete", "serviceaccount", "app-a")
        deleted = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            lambda: not token_review(world.ns.plane, a, [AUDIENCE]).get("authenticated"),
            timeout_s=15,
            what="the API server refusing app-a's token",
        )
        api_401 = time.monotonic() - deleted
        revoked = await poll(acc, a, "extract", until=401, timeout_s=15)
        to_401 = time.monotonic() - deleted
        print(
            f"401 {to_401:.2f} s after the ServiceAccount's deletion, {to_401 - api_401:.2f} s "
            f"after the API server's TokenReview said so (token TTL {token_ttl:g} s)"
        )
        assert {x.status for x in revoked} <= {200, 401}, revoked
        assert to_401 - api_401 <= token_ttl + SLACK_S
        assert world.upstream_problems(allowed=acc.caller.answered) == []
        await assert_counted(acc)


async def test_one_token_for_a_thousand_requests_is_reviewed_once(world: Scene) -> None:
    a = world.tokens["app-a"]
    async with serving(world) as acc:
        since = utc_now()
        limit = asyncio.Semaphore(20)

        async def one() -> int:
            async with limit:
                return (await acc.caller.chat(a, "extract")).status

        began = time.monotonic()
        codes = await asyncio.gather(*(one() for _ in range(1000)))
        took = time.monotonic() - began
        counted = await asyncio.to_thread(reviews, world.ns.plane, world.ns.name, since)
        print(f"\n1000 requests (20 at a time) in {took:.1f} s: {counted}")
        assert codes.count(200) == 1000, {c: codes.count(c) for c in set(codes)}
        assert 1 <= counted["tokenreviews"] <= 3
        assert 1 <= counted["subjectaccessreviews"] <= 3
        assert len(world.upstream.fake.seen) == 1000
        await assert_counted(acc)
        acc.caller.bodies.clear()  # 1000 times the same answer: one is enough to check
        acc.caller.bodies.append((await acc.caller.chat(a, "query")).body)


async def test_with_the_api_server_cut_off_decisions_hold_until_they_expire(
    world: Scene,
) -> None:
    """The gateway reaches the API server through a relay (its own token); cut, what it
    decided keeps working until its TTL ends, then 503 with Retry-After; what it never saw
    is 503 at once, and nothing RBAC would deny is allowed. (Cut as ``refuse``: the API
    server's port answers with a reset, so no review waits for its timeout.)"""
    ns, a, b = world.ns, world.tokens["app-a"], world.tokens["app-b"]
    allowed_ttl = 4.0
    relay = ns.plane.relay()
    try:
        token = await gateway_identity(ns)
        kubeconfig = token_kubeconfig(
            ns.tmp / "relayed.kubeconfig",
            server=f"https://127.0.0.1:{relay.port}",
            ca_cert=ns.plane.pki.ca_cert,
            token=token,
        )
        ttls = ["--auth-allowed-ttl", f"{allowed_ttl:g}", "--auth-denied-ttl", "1"]
        async with serving(world, *ttls, kubeconfig=kubeconfig, token=token) as acc:
            decided = time.monotonic()
            assert (await acc.caller.chat(a, "extract")).status == 200
            assert (await acc.caller.chat(a, "query")).status == 403
            relay.cut()
            cut = time.monotonic()
            assert (await acc.caller.chat(a, "extract")).status == 200  # cached
            unseen = await acc.caller.chat(b, "extract")
            assert unseen.status == 503, unseen
            assert set(unseen.error) >= {"message", "type", "param", "code"}, unseen
            assert int(unseen.headers["Retry-After"]) > 0
            denied = await poll(acc, a, "query", until=503, timeout_s=10)
            assert {x.status for x in denied} <= {403, 503}, denied
            held = await poll(acc, a, "extract", until=503, timeout_s=allowed_ttl + 10)
            to_503, lasted = time.monotonic() - cut, time.monotonic() - decided
            assert {x.status for x in held} <= {200, 503}, held
            assert int(held[-1].headers["Retry-After"]) > 0
            assert (await acc.caller.chat(b, "query")).status == 503

            relay.restore()
            restored = time.monotonic()
            await poll(acc, a, "extract", until=200, timeout_s=20)
            back = time.monotonic() - restored
            print(
                f"\ncut: 503 {to_503:.2f} s after the cut, {lasted:.2f} s after the decision "
                f"(allowed TTL {allowed_ttl:g} s); restored: 200 again in {back:.2f} s"
            )
            assert allowed_ttl - 0.5 <= lasted <= allowed_ttl + SLACK_S
            assert (await acc.caller.chat(a, "query")).status == 403
            assert (await acc.caller.chat(b, "extract")).status == 403
            assert world.upstream_problems(allowed=acc.caller.answered) == []
            await assert_counted(acc)
    finally:
        relay.close()
