"""Client API keys from labelled Secrets: the shared reading (apikeys), the operator's store,
reconcile and render, and the manifests loader. Only a key's hash may reach the config."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest

from rolegate_gateway import ConfigError, apikeys, load_manifests, secret_data
from rolegate_gateway.config import ApiKey, GatewayConfig, key_digest
from rolegate_gateway.manifests import client_key_var, env_var_name
from rolegate_operator import render
from rolegate_operator.reconcile import Reconciler, api_key_entry, secret_keys
from rolegate_operator.settings import Settings
from rolegate_operator.store import Store
from tests.fakes import manifests as m
from tests.unit.test_reconcile import FakeKube, llmrole

CLIENT_KEY = "ck-CLIENT-0123456789abcdef"
ROTATED = "ck-ROTATED-fedcba9876543210"
LABELS = {"rolegate.dev/api-key": "true"}


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def secret(
    name: str,
    key: str | None = CLIENT_KEY,
    *,
    version: int = 1,
    labelled: bool = True,
    roles: str | None = None,
    namespace: str = "team",
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A raw Secret as the API hands it (``data`` base64)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": str(version)}
    if labelled:
        meta["labels"] = dict(LABELS)
    if roles is not None:
        meta["annotations"] = {"rolegate.dev/roles": roles}
    body_data = dict(data or {})
    if key is not None:
        body_data["apiKey"] = b64(key)
    return {"metadata": meta, "data": body_data}


# -- the shared reading ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "roles"),
    [
        (None, None),
        ("extract", ("extract",)),
        ("query,extract", ("extract", "query")),
        (" extract , query ,", ("extract", "query")),
        ("extract,,extract", ("extract",)),
        ("*", ("*",)),
        ("extract, *", ("*",)),
        (" * ", ("*",)),
        ("", ()),
        (" , ", ()),
    ],
)
def test_the_roles_annotation(annotation: str | None, roles: tuple[str, ...] | None) -> None:
    assert apikeys.parse_roles(annotation) == roles


@pytest.mark.parametrize(
    ("labels", "labelled"),
    [
        ({"rolegate.dev/api-key": "true"}, True),
        ({"rolegate.dev/api-key": "false"}, False),
        ({"rolegate.dev/api-key": "True"}, False),
        ({"other": "true"}, False),
        (None, False),
        (["rolegate.dev/api-key"], False),
    ],
)
def test_only_the_label_true_makes_a_key(labels: object, labelled: bool) -> None:
    assert apikeys.is_api_key(labels) is labelled


def test_a_valid_key_becomes_its_hash_and_roles() -> None:
    found = apikeys.api_key_from(
        "team",
        "app",
        annotations={"rolegate.dev/roles": "query,extract"},
        data={"apiKey": b64(CLIENT_KEY)},
    )
    assert found == ApiKey(
        namespace="team", name="app", sha256=key_digest(CLIENT_KEY), roles=("extract", "query")
    )
    assert apikeys.api_key_from("team", "app", annotations=None, data={"apiKey": b64(CLIENT_KEY)})
    plain = apikeys.api_key_from(
        "team",
        "app",
        annotations=None,
        data={"apiKey": b64("x" * 40)},
        string_data={"apiKey": CLIENT_KEY},  # wins, as the API server's stringData does
    )
    assert isinstance(plain, ApiKey)
    assert plain.sha256 == key_digest(CLIENT_KEY)


def test_whitespace_around_the_key_is_no_part_of_it() -> None:
    """``echo`` without ``-n`` leaves a newline that no bearer header can carry."""
    found = apikeys.api_key_from(
        "t", "a", annotations=None, data={"apiKey": b64(CLIENT_KEY + "\n")}
    )
    assert isinstance(found, ApiKey)
    assert found.sha256 == key_digest(CLIENT_KEY)
    padded = apikeys.api_key_from("t", "a", annotations=None, data={"apiKey": b64(" " * 16)})
    assert padded == "data key 'apiKey' is empty"


@pytest.mark.parametrize(
    ("data", "string_data", "annotations", "reason"),
    [
        ({}, None, None, "no data key 'apiKey'"),
        (None, None, None, "no data key 'apiKey'"),
        ({"apiKey": "%%%not-base64"}, None, None, "not base64-encoded UTF-8"),
        ({"apiKey": b64(b"\xff\xfe" * 10)}, None, None, "not base64-encoded UTF-8"),
        ({"apiKey": 12345}, None, None, "not base64-encoded UTF-8"),
        ({"apiKey": ""}, None, None, "is empty"),
        ({"apiKey": b64("sk-SHORT-15char")}, None, None, "shorter than 16 characters"),
        ({}, {"apiKey": "sk-SHORT-15char"}, None, "shorter than 16 characters"),
        ({}, {"apiKey": 12}, None, "is not a string"),
        ({"apiKey": b64(CLIENT_KEY)}, None, {"rolegate.dev/roles": ["a"]}, "not a string"),
    ],
)
def test_a_bad_key_is_a_reason_without_the_value(
    data: object, string_data: object, annotations: object, reason: str
) -> None:
    found = apikeys.api_key_from(
        "team", "app", annotations=annotations, data=data, string_data=string_data
    )
    assert isinstance(found, str)
    assert reason in found
    assert "sk-SHORT" not in found
    assert CLIENT_KEY not in found


def test_sixteen_characters_are_enough() -> None:
    assert isinstance(
        apikeys.api_key_from("t", "a", annotations=None, data={"apiKey": b64("k" * 16)}), ApiKey
    )
    assert isinstance(
        apikeys.api_key_from("t", "a", annotations=None, data={"apiKey": b64("k" * 15)}), str
    )


def test_the_operator_keeps_no_client_key() -> None:
    body = secret("app", data={"awsSessionToken": b64("tok")})
    assert secret_keys(body) == {"awsSessionToken": "tok"}  # apiKey: a client's, not a role's
    unlabelled = secret("creds", labelled=False)
    assert secret_keys(unlabelled) == {"apiKey": CLIENT_KEY}  # an upstream credential
    assert api_key_entry(unlabelled) is None
    entry = api_key_entry(body)
    assert isinstance(entry, ApiKey)
    assert entry.sha256 == key_digest(CLIENT_KEY)


# -- render -------------------------------------------------------------------------------


def test_render_puts_the_hashes_beside_the_roles_and_no_role_hash_moves() -> None:
    role = render.RoleObject(
        "team",
        "extract",
        "uid-x",
        1,
        "2026-11-21T10:00:00Z",
        {
            "binding": "openai",
            "model": "gpt-4o-mini",
            "credentials": {"secretRef": {"name": "creds"}},
        },
        {},
    )
    secrets = {("team", "creds"): {"apiKey": "sk-UPSTREAM-1"}}
    keys = [
        ApiKey(namespace="team", name="z", sha256=key_digest(ROTATED)),
        ApiKey(namespace="other", name="a", sha256=key_digest(CLIENT_KEY), roles=("*",)),
        ApiKey(namespace="team", name="b", sha256=key_digest(CLIENT_KEY + "b")),
    ]
    without = render.render([role], secrets, config_secret="rg/cfg")
    rendered = render.render([role], secrets, config_secret="rg/cfg", api_keys=keys)
    assert [(k.namespace, k.name) for k in rendered.config.api_keys] == [
        ("other", "a"),
        ("team", "b"),
        ("team", "z"),
    ]
    assert rendered.config.roles[0].hash == without.config.roles[0].hash
    assert rendered.config.hash != without.config.hash
    wire = rendered.config.to_wire().decode()
    assert key_digest(CLIENT_KEY) in wire
    assert CLIENT_KEY not in wire
    assert GatewayConfig.from_wire(rendered.config.to_wire()).api_keys == rendered.config.api_keys
    assert b"api_keys" not in without.config.to_wire()


def test_a_role_whose_secret_is_a_client_key_says_why_it_has_no_key() -> None:
    role = render.RoleObject(
        "team",
        "extract",
        "uid-x",
        1,
        "2026-11-21T10:00:00Z",
        {"binding": "openai", "model": "m", "credentials": {"secretRef": {"name": "app"}}},
        {},
    )
    keys = [ApiKey(namespace="team", name="app", sha256=key_digest(CLIENT_KEY))]
    rendered = render.render([role], {("team", "app"): {}}, config_secret="rg/cfg", api_keys=keys)
    outcome = rendered.outcomes[0]
    assert outcome.config is None
    assert outcome.credentials.reason == "KeyMissing"
    assert "rolegate.dev/api-key=true" in outcome.credentials.message
    assert "never sent upstream" in outcome.ready.message


# -- the operator: events, lists, passes ---------------------------------------------------


@pytest.fixture
def op() -> tuple[Reconciler, FakeKube]:
    kube = FakeKube()
    store = Store(stale=False)
    store.roles.put(("team", "extract"), 1, llmrole("extract"))
    store.secrets.put(("team", "creds"), 1, {"apiKey": "sk-UPSTREAM-0123"})
    return Reconciler(Settings(config_secret=("rolegate", "gw-config")), kube, store=store), kube


def served(kube: FakeKube) -> GatewayConfig:
    assert kube.secret is not None
    return GatewayConfig.from_wire(secret_data.decode(kube.secret["data"]))


def woke(reconciler: Reconciler) -> bool:
    was = reconciler._wake.is_set()
    reconciler._wake.clear()
    return was


async def test_a_key_is_served_as_its_hash_then_rotated_unlabelled_and_deleted(
    op: tuple[Reconciler, FakeKube],
) -> None:
    reconciler, kube = op
    reconciler.secret_event("ADDED", secret("app", roles="extract", version=2))
    assert woke(reconciler)
    await reconciler.reconcile()
    config = served(kube)
    assert [(k.name, k.sha256, k.roles) for k in config.api_keys] == [
        ("app", key_digest(CLIENT_KEY), ("extract",))
    ]
    raw = secret_data.decode(kube.secret["data"]) if kube.secret else b""
    assert CLIENT_KEY.encode() not in raw
    assert CLIENT_KEY not in repr(reconciler.store)  # only the hash is kept
    role_hash = config.roles[0].hash

    reconciler.secret_event("MODIFIED", secret("app", ROTATED, roles="extract", version=3))
    assert woke(reconciler)
    rotated = await reconciler.reconcile()
    assert rotated.wrote_config
    assert [k.sha256 for k in served(kube).api_keys] == [key_digest(ROTATED)]
    assert served(kube).roles[0].hash == role_hash

    reconciler.secret_event("MODIFIED", secret("app", ROTATED, labelled=False, version=4))
    assert woke(reconciler)  # it was a key: revoked
    await reconciler.reconcile()
    assert served(kube).api_keys == ()

    reconciler.secret_event("MODIFIED", secret("app", ROTATED, version=5))
    await reconciler.reconcile()
    assert len(served(kube).api_keys) == 1
    reconciler.secret_event("DELETED", secret("app", ROTATED, version=6))
    assert woke(reconciler)
    await reconciler.reconcile()
    assert served(kube).api_keys == ()


async def test_an_unlabelled_secret_is_no_key_and_wakes_nothing(
    op: tuple[Reconciler, FakeKube],
) -> None:
    reconciler, kube = op
    reconciler.secret_event("ADDED", secret("unrelated", labelled=False, version=2))
    assert not woke(reconciler)
    await reconciler.reconcile()
    assert served(kube).api_keys == ()


async def test_a_fresh_list_drops_a_key_deleted_during_a_watch_gap(
    op: tuple[Reconciler, FakeKube],
) -> None:
    reconciler, kube = op
    reconciler.secret_event("ADDED", secret("gone", version=2))
    reconciler.secret_event("ADDED", secret("kept", ROTATED, version=3))
    await reconciler.reconcile()
    assert [k.name for k in served(kube).api_keys] == ["gone", "kept"]

    async def list_roles(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return [llmrole("extract")], "10"

    async def list_secrets(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        creds = secret("creds", "sk-UPSTREAM-0123", labelled=False)
        return [creds, secret("kept", ROTATED, version=3)], "10"

    kube.list_roles = list_roles
    kube.list_secrets = list_secrets
    await reconciler.reconcile(fresh=True)
    assert [k.name for k in served(kube).api_keys] == ["kept"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (secret("bad", None), "no data key 'apiKey'"),
        (secret("bad", "short-secret-1"), "shorter than 16 characters"),
        (
            {**secret("bad", None), "data": {"apiKey": "%%short-secret-1%%"}},
            "not base64-encoded UTF-8",
        ),
    ],
)
async def test_a_bad_key_is_left_out_and_said_once_without_its_value(
    op: tuple[Reconciler, FakeKube],
    caplog: pytest.LogCaptureFixture,
    body: dict[str, Any],
    reason: str,
) -> None:
    reconciler, kube = op
    caplog.set_level(logging.WARNING, logger="rolegate_operator")

    async def list_roles(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return [llmrole("extract")], "10"

    async def list_secrets(namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        return [body], "10"

    kube.list_roles = list_roles
    kube.list_secrets = list_secrets
    reconciler.secret_event("ADDED", body)
    reconciler.secret_event(None, body)  # listed again by a watch that started over
    await reconciler.reconcile(fresh=True)
    await reconciler.reconcile(fresh=True)
    await reconciler.reconcile()
    said = [r.getMessage() for r in caplog.records if "API key Secret" in r.getMessage()]
    assert len(said) == 1
    assert "team/bad" in said[0]
    assert reason in said[0]
    assert "short-secret-1" not in caplog.text
    assert served(kube).api_keys == ()

    changed = {**body, "metadata": {**body["metadata"], "resourceVersion": "11"}}
    reconciler.secret_event("MODIFIED", changed)  # a new version: said again
    said = [r for r in caplog.records if "API key Secret" in r.getMessage()]
    assert len(said) == 2


async def test_a_key_turned_bad_is_revoked(op: tuple[Reconciler, FakeKube]) -> None:
    reconciler, kube = op
    reconciler.secret_event("ADDED", secret("app", version=2))
    await reconciler.reconcile()
    reconciler.secret_event("MODIFIED", secret("app", "too-short", version=3))
    assert woke(reconciler)
    await reconciler.reconcile()
    assert served(kube).api_keys == ()


# -- the manifests loader ------------------------------------------------------------------


def labelled(name: str, namespace: str = "default", roles: str | None = None, **data: str) -> Any:
    doc = m.secret(name, namespace, **data)
    doc["metadata"]["labels"] = dict(LABELS)
    if roles is not None:
        doc["metadata"]["annotations"] = {"rolegate.dev/roles": roles}
    return doc


def test_manifests_turn_labelled_secrets_into_hashes(tmp_path: Path) -> None:
    m.write(
        tmp_path / "keys.yaml",
        labelled("zeta", roles="*", apiKey=CLIENT_KEY),
        labelled("alpha", "ml", roles="query, extract", apiKey=ROTATED),
        m.secret("unlabelled", apiKey=CLIENT_KEY + "-u"),
    )
    config = load_manifests(tmp_path)
    assert [(k.namespace, k.name, k.sha256, k.roles) for k in config.api_keys] == [
        ("default", "zeta", key_digest(CLIENT_KEY), ("*",)),
        ("ml", "alpha", key_digest(ROTATED), ("extract", "query")),
    ]
    wire = config.to_wire().decode()
    assert CLIENT_KEY not in wire
    assert ROTATED not in wire


def test_manifests_take_a_key_from_the_environment(tmp_path: Path) -> None:
    m.write(
        tmp_path / "keys.yaml",
        labelled("app", apiKey=CLIENT_KEY),
        labelled("envonly"),  # no key on disk at all
    )
    env = {client_key_var("app"): ROTATED, client_key_var("envonly"): "e" * 32}
    assert client_key_var("app") == "APP_CLIENT_API_KEY"
    config = load_manifests(tmp_path, env_secrets=True, environ=env)
    assert {k.name: k.sha256 for k in config.api_keys} == {
        "app": key_digest(ROTATED),
        "envonly": key_digest("e" * 32),
    }
    plain = load_manifests(tmp_path, environ=env)  # without --env-secrets: the files only
    assert [(k.name, k.sha256) for k in plain.api_keys] == [("app", key_digest(CLIENT_KEY))]


def test_manifests_leave_bad_keys_out_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rolegate_gateway")
    bad = labelled("undecodable")
    bad["data"] = {"apiKey": "%%short-secret-2%%"}
    path = m.write(
        tmp_path / "keys.yaml",
        labelled("short", apiKey="short-secret-1"),
        bad,
        labelled("good", apiKey=CLIENT_KEY),
    )
    config = load_manifests(tmp_path)
    assert [k.name for k in config.api_keys] == ["good"]
    said = [r.getMessage() for r in caplog.records]
    assert any(str(path) in s and "document 1" in s and "shorter than 16" in s for s in said), said
    assert any("document 2" in s and "not base64" in s for s in said), said
    assert "short-secret" not in caplog.text


def test_a_client_key_is_no_role_credential_in_manifests(tmp_path: Path) -> None:
    m.write(
        tmp_path / "a.yaml",
        m.role("extract", binding="openai", credentials={"secretRef": {"name": "app"}}),
        labelled("app", apiKey=CLIENT_KEY),
    )
    with pytest.raises(ConfigError, match="apiKey") as refused:
        load_manifests(tmp_path)
    assert "rolegate.dev/api-key=true" in str(refused.value)
    assert CLIENT_KEY not in str(refused.value)


def test_a_client_key_from_the_environment_is_no_role_key(tmp_path: Path) -> None:
    """A role naming a key Secret, and a role of another namespace naming a Secret of the
    same name, never get the client's key from its variable."""
    m.write(
        tmp_path / "a.yaml",
        m.role("extract", binding="openai", credentials={"secretRef": {"name": "app"}}),
        m.role(
            "query",
            binding="openai",
            namespace="other",
            credentials={"secretRef": {"name": "app"}},
        ),
        labelled("app"),
    )
    env = {client_key_var("app"): CLIENT_KEY}
    with pytest.raises(ConfigError, match="apiKey"):
        load_manifests(tmp_path, env_secrets=True, environ=env)
    roles_own = {**env, env_var_name("app", "apiKey"): "sk-ROLE-KEY-1"}  # the roles' variable
    config = load_manifests(tmp_path, env_secrets=True, environ=roles_own)
    for role in config.roles:
        assert role.upstream.credentials.api_key is not None
        assert role.upstream.credentials.api_key.get_secret_value() == "sk-ROLE-KEY-1"
    assert [k.sha256 for k in config.api_keys] == [key_digest(CLIENT_KEY)]


@pytest.mark.parametrize(
    "key", ["caf\u00e9-" + "k" * 16, "k" * 8 + "\n" + "k" * 8, "k" * 8 + "\t" + "k" * 8]
)
def test_a_key_a_bearer_header_cannot_carry_is_no_key(key: str) -> None:
    found = apikeys.api_key_from("t", "a", annotations=None, data={"apiKey": b64(key)})
    assert isinstance(found, str)
    assert "printable ASCII" in found
