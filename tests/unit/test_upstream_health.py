"""Judging upstream health without a network: model lists (odd bodies too), verdicts,
probes and their dedupe key, the compact Lease encoding and its bound, and how the
operator turns replicas' reports into ``UpstreamReady`` and Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from rolegate_gateway.api import Binding, ConditionStatus
from rolegate_gateway.config import Credentials, GatewayConfig, Upstream
from rolegate_gateway.health import HealthChecker
from rolegate_gateway.leases import Report
from rolegate_gateway.probes import (
    MAX_LISTED,
    Answer,
    State,
    judge,
    probe_for,
    served_models,
)
from rolegate_gateway.runtime import Runtime
from rolegate_gateway.scrub import Scrubber
from rolegate_gateway.upstream_report import UPSTREAM_ANNOTATION, UpstreamReport, encode
from rolegate_operator.render.status import transitions
from rolegate_operator.render.upstream import upstream_check
from tests.fakes.configs import role_config

KEY = "sk-UNITHEALTH-0123456789"
AT = "2026-12-02T08:00:00Z"


def upstream(binding: Binding = Binding.OPENAI, model: str = "tiny-a", **more: object) -> Upstream:
    return Upstream(
        binding=binding,
        model=model,
        base_url=str(more.pop("base_url", "http://127.0.0.1:9/v1")),
        timeout_s=5,
        credentials=Credentials(api_key=SecretStr(str(more.pop("key", KEY)))),
        **more,  # type: ignore[arg-type]
    )


# -- model lists -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "models"),
    [
        (b'{"object":"list","data":[{"id":"a"},{"id":"b"}]}', ["a", "b"]),
        (b'{"data":[]}', []),
        (b'{"data":[{"id":"a"},{"id":7},"x",null,{"name":"n"}]}', ["a", "n"]),
        (b'{"models":[{"name":"llama3:latest","model":"llama3:latest"}]}', ["llama3:latest"]),
        (b'[{"id":"a"}]', ["a"]),
        (b'{"data":{"id":"a"}}', None),
        (b'{"error":{"message":"nope"}}', None),
        (b"<html>502</html>", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"42", None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # too deep for the parser
        (b'{"data":' * 100_000 + b"1" + b"}" * 100_000, None),
    ],
)
def test_served_models_reads_lists_and_refuses_the_rest(
    body: bytes, models: list[str] | None
) -> None:
    assert served_models(body) == models


# -- verdicts ----------------------------------------------------------------------------


def test_a_listed_model_is_reachable_an_unlisted_one_names_what_is_served() -> None:
    up = upstream(model="tiny-c")
    probe = probe_for(up)
    assert probe is not None
    listed = Answer(200, ["tiny-b", "tiny-a", "tiny-embed"])
    verdict = judge(up, probe, listed, at=AT)
    assert verdict.state is State.MODEL_NOT_SERVED
    assert verdict.message == (
        "model 'tiny-c' is not served at http://127.0.0.1:9/v1/models; "
        "served: tiny-a, tiny-b, tiny-embed"
    )
    assert verdict.checked_at == AT
    assert judge(upstream(model="tiny-a"), probe, listed, at=AT).state is State.REACHABLE


def test_model_not_served_lists_twenty_models_at_most() -> None:
    up = upstream(model="x")
    probe = probe_for(up)
    assert probe is not None
    many = [f"m{i:02}" for i in range(45)]
    message = judge(up, probe, Answer(200, many), at=AT).message
    assert f"m{MAX_LISTED - 1:02}" in message
    assert f"m{MAX_LISTED:02}" not in message
    assert message.endswith("and 25 more")


@pytest.mark.parametrize(
    ("answer", "state", "said"),
    [
        (
            Answer(401, detail="bad key"),
            State.UNAUTHORIZED,
            "answered 401 to the role's credentials: bad key",
        ),
        (Answer(403), State.UNAUTHORIZED, "answered 403"),
        (Answer(404, detail="no route"), State.UNREACHABLE, "answered 404: no route"),
        (Answer(503), State.UNREACHABLE, "answered 503"),
        (Answer(200, None), State.UNREACHABLE, "without a model list"),
        (Answer(error="ClientConnectorError: refused"), State.UNREACHABLE, "refused"),
    ],
)
def test_failures_are_judged_by_status(answer: Answer, state: State, said: str) -> None:
    up = upstream()
    probe = probe_for(up)
    assert probe is not None
    verdict = judge(up, probe, answer, at=AT)
    assert verdict.state is state
    assert said in verdict.message
    assert KEY not in verdict.message


def test_ollama_matches_latest_and_anthropic_aliases_are_not_judged() -> None:
    up = upstream(Binding.OLLAMA, model="llama3")
    probe = probe_for(up)
    assert probe is not None
    assert judge(up, probe, Answer(200, ["llama3:latest"]), at=AT).state is State.REACHABLE
    alias = upstream(Binding.ANTHROPIC, model="claude-3-5-haiku-latest", base_url="https://a.test")
    probe = probe_for(alias)
    assert probe is not None
    assert judge(alias, probe, Answer(200, ["claude-3-5-haiku-20241022"]), at=AT).state is (
        State.REACHABLE
    )


# -- probes and their dedupe key ---------------------------------------------------------


def test_probes_per_binding_use_the_roles_credentials() -> None:
    openai = probe_for(upstream())
    assert openai is not None
    assert (openai.url, dict(openai.headers)) == (
        "http://127.0.0.1:9/v1/models",
        {"Authorization": f"Bearer {KEY}"},
    )
    anthropic = probe_for(upstream(Binding.ANTHROPIC, base_url="https://api.anthropic.com"))
    assert anthropic is not None
    assert anthropic.url == "https://api.anthropic.com/v1/models?limit=1000"
    assert dict(anthropic.headers)["x-api-key"] == KEY
    assert "anthropic-version" in dict(anthropic.headers)
    azure = probe_for(
        upstream(
            Binding.AZURE_OPENAI,
            base_url="https://r.openai.azure.com",
            azure_api_version="2024-10-21",
            azure_deployment="d",
        )
    )
    assert azure is not None
    assert azure.url == "https://r.openai.azure.com/openai/models?api-version=2024-10-21"
    assert dict(azure.headers) == {"api-key": KEY}
    assert not azure.judges_model
    assert probe_for(upstream(Binding.BEDROCK, bedrock_region="us-east-1")) is None


def test_the_dedupe_key_is_the_url_and_the_credentials_never_the_model() -> None:
    a, b = probe_for(upstream(model="tiny-a")), probe_for(upstream(model="tiny-b"))
    other_key = probe_for(upstream(key=KEY + "x"))
    other_host = probe_for(upstream(base_url="http://127.0.0.2:9/v1"))
    assert a is not None
    assert b is not None
    assert other_key is not None
    assert other_host is not None
    assert a.key == b.key
    assert len({a.key, other_key.key, other_host.key}) == 3
    assert KEY not in str(a.key)
    assert KEY not in a.shown


# -- the Lease encoding ------------------------------------------------------------------


def test_roles_are_grouped_by_state_and_message_the_largest_group_unnamed() -> None:
    verdicts = {f"ok{i}": ("Reachable", "") for i in range(500)}
    verdicts |= {f"bad{i}": ("ModelNotServed", "model 'x' not served; served: a") for i in range(3)}
    verdicts["new"] = ("NotChecked", "not checked yet")
    raw = encode(verdicts)
    assert json.loads(raw) == {
        "n": 504,
        "default": ["Reachable", ""],
        "groups": [
            ["NotChecked", "not checked yet", ["new"]],
            ["ModelNotServed", "model 'x' not served; served: a", ["bad0", "bad1", "bad2"]],
        ],
        "more": 0,
    }
    report = UpstreamReport.decode(raw)
    assert report is not None
    assert report.verdict("ok7") == (State.REACHABLE, "")
    assert report.verdict("bad1") == (State.MODEL_NOT_SERVED, "model 'x' not served; served: a")
    assert report.verdict("new") == (State.NOT_CHECKED, "not checked yet")


def test_ten_thousand_roles_on_one_broken_upstream_fit_by_naming_the_healthy_ones() -> None:
    message = "GET http://up/v1/models: ClientConnectorError: refused"
    verdicts = {f"role-{i:05}": ("Unreachable", message) for i in range(10_000)}
    verdicts |= {f"fine-{i:03}": ("Reachable", "") for i in range(500)}
    raw = encode(verdicts)
    assert len(raw.encode()) < 8 * 1024
    report = UpstreamReport.decode(raw)
    assert report is not None
    assert report.more == 0
    assert report.verdict("role-04321") == (State.UNREACHABLE, message)
    assert report.verdict("fine-007") == (State.REACHABLE, "")


def test_ten_thousand_healthy_roles_on_twenty_models_are_one_unnamed_group() -> None:
    verdicts = {
        f"role-{i:05}": ("Reachable", f"GET http://h{i % 20}/v1/models lists 'model-{i % 20}'")
        for i in range(10_000)
    }
    raw = encode(verdicts)
    assert len(raw.encode()) < 200
    report = UpstreamReport.decode(raw)
    assert report is not None
    assert report.more == 0
    assert all(report.verdict(role) == (State.REACHABLE, "") for role in verdicts)


def test_over_the_bound_the_roles_of_large_groups_stay_named() -> None:
    verdicts = {f"ok-{i:05}": ("Reachable", "") for i in range(5_000)}
    # one upstream down for 2,000 roles, and 300 roles each broken its own way
    verdicts |= {
        f"down-{i:04}": ("Unreachable", "GET http://a/v1/models answered 503") for i in range(2_000)
    }
    verdicts |= {
        f"odd-{i:03}": ("Unreachable", f"GET http://h{i}/v1/models answered 500: " + "x" * 200)
        for i in range(300)
    }
    raw = encode(verdicts, limit=40 * 1024)
    assert len(raw.encode()) <= 40 * 1024
    report = UpstreamReport.decode(raw)
    assert report is not None
    assert 0 < report.more < 300  # only roles of the small groups left out
    assert report.verdict("down-1999") == (State.UNREACHABLE, "GET http://a/v1/models answered 503")


def test_the_encoding_stays_within_its_bound_and_says_what_it_left_out() -> None:
    # 10,000 roles, each upstream broken its own way: far over the bound.
    verdicts = {
        f"role-{i:05}": ("Unreachable", f"GET http://h{i}/models: " + "x" * 300)
        for i in range(10_000)
    }
    verdicts["big-group-0"] = ("Unauthorized", "401")
    limit = 40 * 1024
    raw = encode(verdicts, limit=limit)
    assert len(raw.encode()) <= limit
    report = UpstreamReport.decode(raw)
    assert report is not None
    assert report.more > 0
    assert report.judged == 10_001
    named = [r for r in verdicts if report.verdict(r) is not None]
    # every group has one role here: one is the (unnamed) default, the rest named or left out
    assert 0 < len(named) == len(report.named) == len(verdicts) - report.more - 1
    # a role left out is not taken for Reachable
    assert report.verdict("role-09999") is None or report.verdict("role-09999") != (
        State.REACHABLE,
        "",
    )
    assert all(len(m) <= 160 for _, m in report.named.values())


@pytest.mark.parametrize(
    "raw", [None, "", "{", "[]", '{"bad": 3}', '{"bad": [["Weird", "m", ["r"]]]}']
)
def test_odd_annotations_are_read_leniently(raw: str | None) -> None:
    report = UpstreamReport.decode(raw)
    if raw in (None, "", "{", "[]"):
        assert report is None
    else:
        assert report is not None
        assert report.verdict("r") in ((State.REACHABLE, ""), (State.NOT_CHECKED, "m"))


# -- UpstreamReady -----------------------------------------------------------------------


def lease(holder: str, role_hash: str, upstream: dict[str, tuple[str, str]] | None) -> Report:
    notes = {
        "rolegate.dev/config-hash": "c1",
        "rolegate.dev/role-hashes": json.dumps({"r": role_hash}),
    }
    if upstream is not None:
        notes[UPSTREAM_ANNOTATION] = encode(upstream)
    return Report.from_lease(
        {
            "metadata": {"name": f"gw-{holder}", "annotations": notes},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10, "renewTime": "t"},
        }
    )


def check(*reports: Report) -> tuple[ConditionStatus, str, str]:
    got = upstream_check("r", "h1", config_hash="c1", reports=list(reports))
    return got.status, got.reason, got.message


def test_all_replicas_reachable_is_true() -> None:
    status, reason, message = check(
        lease("a", "h1", {"r": ("Reachable", "")}), lease("b", "h1", {})
    )
    assert (status, reason) == (ConditionStatus.TRUE, "Reachable")
    # true for azure_openai and anthropic aliases too, whose model is not judged
    assert message == (
        "the upstream answered its check with the role's credentials, "
        "as 2 of 2 gateway replicas see it"
    )


def test_a_replica_that_has_not_checked_yet_does_not_make_a_healthy_role_unknown() -> None:
    starting = lease("b", "h1", {"r": ("NotChecked", "not checked yet")})
    status, reason, message = check(lease("a", "h1", {"r": ("Reachable", "")}), starting)
    assert (status, reason) == (ConditionStatus.TRUE, "Reachable")
    assert message.endswith("as 1 of 2 gateway replicas see it (1 not checked yet)")
    # nor a healthy role's failure: the replica that checked decides
    failed = lease("a", "h1", {"r": ("Unauthorized", "GET x answered 401")})
    assert check(failed, starting)[:2] == (ConditionStatus.FALSE, "Unauthorized")
    # a replica serving an older hash does not count as having checked
    stale = lease("c", "h0", {"r": ("Reachable", "")})
    assert check(stale, starting)[:2] == (ConditionStatus.UNKNOWN, "NotChecked")


def test_the_worst_replica_wins_and_is_named() -> None:
    status, reason, message = check(
        lease("a", "h1", {"r": ("Reachable", "")}),
        lease("b", "h1", {"r": ("Unreachable", "GET x: refused")}),
        lease("c", "h1", {"r": ("Unauthorized", "GET x answered 401")}),
    )
    assert (status, reason) == (ConditionStatus.FALSE, "Unauthorized")
    assert message == "GET x answered 401 (gateway replica c; 1 of 3 replicas say Unauthorized)"


def test_unknown_while_not_checked_or_not_served_or_not_reported() -> None:
    assert check(lease("a", "h1", {"r": ("NotChecked", "not checked yet")}))[:2] == (
        ConditionStatus.UNKNOWN,
        "NotChecked",
    )
    # a replica on an older config is not asked; none left: Unknown
    assert check(lease("a", "h0", {"r": ("ModelNotServed", "old")}))[:2] == (
        ConditionStatus.UNKNOWN,
        "NotChecked",
    )
    assert check(lease("a", "h1", None))[2].startswith("this replica does not check upstreams")
    assert check()[:2] == (ConditionStatus.UNKNOWN, "NotChecked")
    unknown = upstream_check("r", "h1", config_hash="c1", reports=None, unknown="RBAC")
    assert (unknown.status, unknown.message) == (ConditionStatus.UNKNOWN, "RBAC")


def cond(status: str, reason: str) -> dict[str, object]:
    return {
        "conditions": [
            {"type": "UpstreamReady", "status": status, "reason": reason, "message": "m"}
        ]
    }


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        (None, ("Unknown", "NotChecked"), None),
        # a rebind's verdict, after the moment it was not checked: told (a rebind from a
        # model not served, through Unknown, to one that is, is a recovery)
        (("Unknown", "NotChecked"), ("True", "Reachable"), "Normal"),
        (None, ("True", "Reachable"), None),
        (None, ("False", "Unauthorized"), "Warning"),
        (("True", "Reachable"), ("False", "ModelNotServed"), "Warning"),
        (("False", "ModelNotServed"), ("False", "Unauthorized"), "Warning"),
        (("False", "ModelNotServed"), ("True", "Reachable"), "Normal"),
        (("False", "Unreachable"), ("Unknown", "NotChecked"), None),
        (("Unknown", "NotChecked"), ("False", "Unreachable"), "Warning"),
    ],
)
def test_events_when_upstream_ready_turns_false_or_true_never_unknown(
    before: tuple[str, str] | None, after: tuple[str, str], event: str | None
) -> None:
    current = cond(*before) if before else {}
    changes = transitions(current, cond(*after))
    if event is None:
        assert changes == []
    else:
        assert len(changes) == 1
        assert ("Warning" if changes[0].warning else "Normal") == event


def test_the_url_shown_has_no_userinfo_or_query() -> None:
    probe = probe_for(upstream(base_url="http://user:sk-IN-URL-secret@127.0.0.1:9/v1"))
    assert probe is not None
    assert probe.shown == "http://127.0.0.1:9/v1/models"
    verdict = judge(upstream(), probe, Answer(error="refused"), at=AT)
    assert "sk-IN-URL-secret" not in verdict.message


def test_the_checks_are_on_by_default_and_off_with_interval_zero() -> None:
    from rolegate_gateway import cli
    from rolegate_gateway.runtime import Runtime

    base = ["--manifests", "x"]
    on = cli._health(cli.parser().parse_args(base), Runtime())
    assert on is not None
    assert (on.interval_s, on.timeout_s) == (30.0, 5.0)
    off = cli.parser().parse_args([*base, "--upstream-check-interval", "0"])
    assert cli._health(off, Runtime()) is None


# -- the checker, on a fake client session -----------------------------------------------


class FakeBody:
    """An answer's body in chunks; ``read``: bytes handed out so far."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.read = 0

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk


class FakeAnswer:
    def __init__(self, status: int, chunks: list[bytes]) -> None:
        self.status = status
        self.content = FakeBody(chunks)
        self.content_length = sum(len(c) for c in chunks)
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> FakeAnswer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """``get(url)`` answers ``answer(url)`` (which may raise); ``gets``: the URLs asked."""

    def __init__(self, answer: Callable[[str], FakeAnswer]) -> None:
        self.answer = answer
        self.gets: list[str] = []

    def get(self, url: str, **_: Any) -> FakeAnswer:
        self.gets.append(url)
        return self.answer(url)


def listing(*models: str) -> FakeAnswer:
    return FakeAnswer(200, [json.dumps({"data": [{"id": m} for m in models]}).encode()])


async def checker_for(*roles: Any) -> tuple[HealthChecker, Runtime]:
    runtime = Runtime()
    runtime.apply(GatewayConfig(roles=list(roles)))
    checker = HealthChecker(runtime)
    runtime.listeners.append(checker.config_applied)
    return checker, runtime


async def test_a_down_upstream_compiles_its_scrubber_once_not_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = []
    original = Scrubber._compile

    def counting(self: Scrubber) -> None:
        if self._secrets is not None:
            compiled.append(self)
        original(self)

    monkeypatch.setattr(Scrubber, "_compile", counting)
    roles = [role_config(f"r{i}", key=KEY) for i in range(3)]
    checker, _ = await checker_for(*roles)
    session = FakeSession(lambda _: FakeAnswer(401, [f'{{"error":"bad key {KEY}"}}'.encode()]))
    for _ in range(3):
        await checker.check(session)  # type: ignore[arg-type]
    assert len(session.gets) == 3  # one probe per round for the three roles
    assert len(compiled) <= 1
    verdict = checker.verdicts["r0"]
    assert verdict.state is State.UNAUTHORIZED
    assert "bad key" in verdict.message
    assert KEY not in verdict.message


async def test_only_the_head_of_an_error_body_is_read() -> None:
    checker, _ = await checker_for(role_config("r", key=KEY))
    answer = FakeAnswer(503, [b'{"error":"overloaded"}'.ljust(64 * 1024)] + [b"x" * 65536] * 63)
    await checker.check(FakeSession(lambda _: answer))  # type: ignore[arg-type]
    assert answer.content.read <= 64 * 1024
    assert checker.verdicts["r"].state is State.UNREACHABLE
    assert checker.verdicts["r"].message.endswith("answered 503: overloaded")


async def test_a_check_that_fails_unforeseen_fails_only_its_own_roles() -> None:
    broken = role_config("broken", base_url="http://broken:9/v1", key=KEY)
    fine = role_config("fine", base_url="http://fine:9/v1", key=KEY)
    deep = role_config("deep", base_url="http://deep:9/v1", key=KEY)
    checker, _ = await checker_for(broken, fine, deep)

    def answer(url: str) -> FakeAnswer:
        if "broken" in url:
            raise RuntimeError(f"a bug quoting {KEY}")
        if "deep" in url:
            return FakeAnswer(200, [b"[" * 100_000 + b"]" * 100_000])
        return listing("m")

    await checker.check(FakeSession(answer))  # type: ignore[arg-type]
    assert checker.rounds == 1
    assert checker.verdicts["fine"].state is State.REACHABLE
    failed = checker.verdicts["broken"]
    assert failed.state is State.UNREACHABLE
    assert failed.message == "GET http://broken:9/v1/models: the check failed: RuntimeError"
    assert checker.verdicts["deep"].state is State.UNREACHABLE
    assert "without a model list" in checker.verdicts["deep"].message


async def test_roles_removed_during_a_round_leave_nothing_behind() -> None:
    roles = [role_config(f"r{i:04}", key=f"sk-ROLE-{i:04}-secret") for i in range(1_200)]
    checker, runtime = await checker_for(*roles)
    task = asyncio.create_task(checker.check(FakeSession(lambda _: listing("m"))))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the round has read its first slice of roles and yields
    runtime.apply(GatewayConfig(roles=roles[:100]))
    await task
    assert set(checker.verdicts) == set(runtime.roles)
    assert set(checker._probes) <= set(runtime.roles)  # no credentials of removed roles kept
    assert set(checker._judged) <= set(runtime.roles)


class HeldAnswer(FakeAnswer):
    """An answer that comes only once ``release`` is set (a slow upstream)."""

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__(200, [json.dumps({"data": [{"id": "m"}]}).encode()])
        self.release = release

    async def __aenter__(self) -> FakeAnswer:
        await self.release.wait()
        return self


async def test_a_role_added_while_a_slow_upstream_holds_a_round_is_checked_at_once() -> None:
    slow = role_config("slow", base_url="http://slow:9/v1", key=KEY)
    checker, runtime = await checker_for(slow)
    checker.interval_s = 3600.0  # only the rounds that configs start
    release = asyncio.Event()
    session = FakeSession(lambda url: HeldAnswer(release) if "slow" in url else listing("m"))
    task = asyncio.create_task(checker.run(session))  # type: ignore[arg-type]
    try:
        await eventually_async(lambda: session.gets == ["http://slow:9/v1/models"])
        added = role_config("added", base_url="http://fast:9/v1", key=KEY)
        runtime.apply(GatewayConfig(roles=[slow, added]))
        await eventually_async(lambda: checker.verdicts["added"].state is State.REACHABLE)
        assert checker.verdicts["slow"].state is State.NOT_CHECKED  # still held
        assert session.gets == ["http://slow:9/v1/models", "http://fast:9/v1/models"]
        release.set()
        await eventually_async(lambda: checker.verdicts["slow"].state is State.REACHABLE)
        assert len(session.gets) == 2  # the unchanged role was not probed again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def eventually_async(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
