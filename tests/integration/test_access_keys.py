"""Client API keys under ``--auth kubernetes``: a Secret labelled ``rolegate.dev/api-key``
whose ``apiKey`` is the key; the user ``rolegate:apikey:<namespace>:<name>`` (group
``rolegate:apikeys``), authorised by RBAC as any other; rotated by editing the Secret,
revoked by deleting it; the config Secret holds only its sha256.

The same stack and :class:`~tests.fixtures.access.Scene` as ``test_access.py`` (whose module
docstring says what each test's exit checks: nothing leaked, no process left).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from rolegate_gateway import secret_data
from tests.fakes import manifests as m
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
from tests.fixtures.identities import api_key_secret, grant
from tests.fixtures.stack import CONFIG

__all__ = ["access_plane", "world"]  # the fixtures, for pytest

pytestmark = pytest.mark.cluster

KEY: str = "rgk-ACCESS-first-6a1f0c9e3b57"
ROTATED: str = "rgk-ACCESS-second-d24b7e18a590"
UNLABELLED: str = "rgk-ACCESS-unlabelled-0e93c4"
ANNOTATED: str = "rgk-ACCESS-annotated-77b0d2e1"
SHORT: str = "rgk-15-chars-Qx"  # one less than the 16 a key needs
#: Seconds an edit of a key Secret may take to reach the gateway (operator + config watch).
PROPAGATION_S = 5.0


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def config_secret(world: Scene) -> str:
    """The config Secret as the API server stores it (JSON, data base64), its data decoded
    and the config unzipped, as one text."""
    raw = await world.ns.run("get", "secret", CONFIG, "-o", "json")
    data = json.loads(raw)["data"]
    config = secret_data.decode(data).decode()  # gzipped in the Secret
    return (
        raw
        + config
        + "".join(base64.b64decode(v).decode("utf-8", "replace") for v in data.values())
    )


async def test_an_api_key_is_authorised_by_rbac_rotated_and_revoked(world: Scene) -> None:
    ns = world.ns
    user = f"rolegate:apikey:{ns.name}:client-key"
    # "annotated": its rolegate.dev/roles annotation counts under --auth keys only; RBAC
    # grants it nothing. "short-key": RBAC would allow it, but it is too short to be a key.
    annotated = api_key_secret("annotated", ANNOTATED)
    annotated["metadata"]["annotations"] = {"rolegate.dev/roles": "*"}
    await ns.apply(
        api_key_secret("client-key", KEY),
        annotated,
        api_key_secret("short-key", SHORT),
        m.secret("not-a-key", apiKey=UNLABELLED),
        *grant(ns, user, ["extract"]),
        *grant(ns, f"rolegate:apikey:{ns.name}:short-key", ["extract"]),
    )
    async with serving(world, "--auth-denied-ttl", "1") as acc:
        acc.secrets |= {
            "the key": KEY,
            "the rotated key": ROTATED,
            "an unlabelled key": UNLABELLED,
            "the annotated key": ANNOTATED,
            "the short key": SHORT,
        }
        await poll(acc, KEY, "extract", until=200, timeout_s=PROPAGATION_S)
        async with sdk(acc, KEY) as client:
            reply = await client.chat.completions.create(model="extract", messages=HI)
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model="extract", messages=HI, stream=True
                )
            ]
        assert reply.choices[0].message.content == "hi from up"
        assert len(chunks) > 1
        refused = await acc.caller.chat(KEY, "query")
        assert_error(refused, 403, "permission_denied")
        assert "query" in refused.error["message"]
        assert user in refused.error["message"]
        assert await acc.caller.models(KEY) == ["extract"]
        assert_error(await acc.caller.chat(UNLABELLED, "extract"), 401, "invalid_api_key")
        assert_error(await acc.caller.chat(SHORT, "extract"), 401, "invalid_api_key")
        assert_error(await acc.caller.chat(ANNOTATED, "extract"), 403, "permission_denied")
        assert await acc.caller.models(ANNOTATED) == []

        stored = await config_secret(world)
        assert digest(KEY) in stored  # the operator wrote the key's hash ...
        assert digest(SHORT) not in stored
        for secret in (KEY, UNLABELLED, ANNOTATED, SHORT):  # ... and nothing of a key itself
            assert secret not in stored
            assert base64.b64encode(secret.encode()).decode() not in stored

        # Every key is in group rolegate:apikeys: one RoleBinding grants them all a role.
        await ns.apply(*grant(ns, "group:rolegate:apikeys", ["query"]))
        await poll(acc, KEY, "query", until=200, timeout_s=1 + SLACK_S)

        await ns.apply(api_key_secret("client-key", ROTATED))
        edited = time.monotonic()
        new = await poll(acc, ROTATED, "extract", until=200, timeout_s=PROPAGATION_S)
        new_works = time.monotonic() - edited
        old = await poll(acc, KEY, "extract", until=401, timeout_s=PROPAGATION_S)
        old_refused = time.monotonic() - edited
        assert {x.status for x in new} <= {401, 200}, new
        assert {x.status for x in old} <= {200, 401}, old
        stored = await config_secret(world)
        assert digest(ROTATED) in stored
        assert digest(KEY) not in stored
        assert ROTATED not in stored
        assert base64.b64encode(ROTATED.encode()).decode() not in stored

        await ns.run("delete", "secret", "client-key")
        deleted = time.monotonic()
        revoked = await poll(acc, ROTATED, "extract", until=401, timeout_s=PROPAGATION_S)
        took = time.monotonic() - deleted
        assert revoked[-1].error["code"] == "invalid_api_key"
        assert_error(await acc.caller.chat(KEY, "extract"), 401, "invalid_api_key")
        print(
            f"\nrotation: new key 200 in {new_works:.2f} s, old key 401 in {old_refused:.2f} s; "
            f"revocation: 401 in {took:.2f} s"
        )
        keys = [KEY, ROTATED, UNLABELLED, ANNOTATED, SHORT]
        assert world.upstream_problems(allowed=2 + acc.caller.answered, keys=keys) == []
        await assert_counted(acc, allowed=2)
