"""The chart's access control (gateway.auth) as ``helm template`` renders it, with the pinned
helm: the gateway's ``--auth`` flags per mode, the gateway's ``system:auth-delegator``
binding only where it checks tokens, the ClusterRole users bind (verb ``use`` on LLMRoles),
and the ``helm test`` pod calling as a client does (its own ServiceAccount bound to that
ClusterRole, test hooks that exist only while the test runs; a projected token of the
gateway's audience sent as a bearer token), which is also run here against a small server
that checks the header. No control plane:
tests/integration/test_chart.py installs the chart, tests/e2e/test_helm_node.py runs it.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.process import free_ports
from tests.fixtures.chart import (
    AUTH_FLAGS,
    RENDER_NS,
    by_kind,
    container,
    deployment_command,
    named,
    render,
)

# Needs the pinned helm that `python -m devstack build k8s` builds.
pytestmark = pytest.mark.cluster

NS = RENDER_NS
TOKEN = "projected.token.of-the-test-pod"
USE = [{"apiGroups": ["rolegate.dev"], "resources": ["llmroles"], "verbs": ["use"]}]
USER_ROLE_REF = {
    "apiGroup": "rbac.authorization.k8s.io",
    "kind": "ClusterRole",
    "name": "rolegate-user",
}
TEST_SUBJECT = {"kind": "ServiceAccount", "name": "rolegate-test", "namespace": NS}
#: The test pod's identity: created before the pod (weight -1 < 0), deleted once it passed.
IDENTITY_HOOK = {
    "helm.sh/hook": "test",
    "helm.sh/hook-weight": "-1",
    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
}


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of the objects of ``kinds``, sorted."""
    return sorted(
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        for d in docs
        if d["kind"] in kinds
    )


def hook_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [pod] = [d for d in docs if d["kind"] == "Pod"]
    return pod


def after_drain_grace(command: list[str]) -> list[str]:
    """The gateway's access flags: those between ``--drain-grace N`` and
    ``--presence-lease-duration``."""
    start = command.index("--drain-grace") + 2
    return command[start : command.index("--presence-lease-duration")]


# -- the gateway's flags ----------------------------------------------------------------------


def test_the_default_checks_tokens_with_rbac(chart: Any) -> None:
    assert after_drain_grace(deployment_command(chart(), "gateway")) == AUTH_FLAGS


def test_auth_values_reach_the_flags(chart: Any) -> None:
    docs = chart(
        "gateway.auth.tokenAudience=llm-gateway",
        "gateway.auth.tokenTTL=120",
        "gateway.auth.allowedTTL=10",
        "gateway.auth.deniedTTL=1",
        "gateway.metrics.clientLabel=true",
    )
    assert after_drain_grace(deployment_command(docs, "gateway")) == [
        "--auth",
        "kubernetes",
        "--token-audience",
        "llm-gateway",
        "--auth-token-ttl",
        "120",
        "--auth-allowed-ttl",
        "10",
        "--auth-denied-ttl",
        "1",
        "--metrics-client-label",
    ]


def test_mode_none_asks_nobody(chart: Any) -> None:
    docs = chart("gateway.auth.mode=none")
    assert after_drain_grace(deployment_command(docs, "gateway")) == ["--auth", "none"]
    # No reviews for the gateway, no identity for the test pod; the user ClusterRole stays,
    # so bindings made beforehand work once the mode is kubernetes.
    assert of_kind(docs, "ClusterRole", "ClusterRoleBinding") == [
        ("ClusterRole", "", "rolegate-user")
    ]
    assert of_kind(docs, "ServiceAccount") == [
        ("ServiceAccount", NS, "rolegate-gateway"),
        ("ServiceAccount", NS, "rolegate-operator"),
    ]
    assert "rolegate-test" not in {name for _, _, name in of_kind(docs, "RoleBinding")}
    spec = hook_pod(docs)["spec"]
    assert "serviceAccountName" not in spec
    assert "volumes" not in spec
    assert spec["automountServiceAccountToken"] is False
    box = container(hook_pod(docs))
    assert "volumeMounts" not in box
    assert "TOKEN_FILE" not in {e["name"] for e in box["env"]}


# -- RBAC -------------------------------------------------------------------------------------


def test_the_gateway_may_review_tokens_and_access(chart: Any) -> None:
    docs = chart()
    binding = named(docs, "ClusterRoleBinding", f"rolegate-gateway-auth-delegator-{NS}")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rolegate-gateway", "namespace": NS}
    ]
    assert binding["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    # The gateway's own Role is unchanged: one Secret by name.
    assert named(docs, "Role", "rolegate-gateway")["rules"][0]["resourceNames"] == [
        "rolegate-gateway-config"
    ]


def test_the_user_cluster_role_grants_use_on_llmroles(chart: Any) -> None:
    role = named(chart(), "ClusterRole", "rolegate-user")
    assert role["rules"] == USE
    assert "namespace" not in role["metadata"]
    renamed = chart("gateway.auth.userClusterRole.name=llm-caller")
    assert named(renamed, "ClusterRole", "llm-caller")["rules"] == USE
    assert named(renamed, "RoleBinding", "rolegate-test")["roleRef"]["name"] == "llm-caller"
    # Another release owns it: none here, and the test pod's binding still names it.
    shared = chart("gateway.auth.userClusterRole.create=false")
    assert of_kind(shared, "ClusterRole") == []
    assert named(shared, "RoleBinding", "rolegate-test")["roleRef"] == USER_ROLE_REF


@pytest.mark.parametrize(
    ("sets", "bindings"),
    [
        ([], [("RoleBinding", NS, "rolegate-test")]),
        (
            ["watchNamespaces={team-a,team-b}"],
            [("RoleBinding", ns, "rolegate-test") for ns in ("team-a", "team-b")],
        ),
        (["watchNamespaces={*}"], [("ClusterRoleBinding", "", f"rolegate-test-{NS}")]),
    ],
)
def test_the_test_pod_may_use_the_roles_where_they_are(
    chart: Any, sets: list[str], bindings: list[tuple[str, str, str]]
) -> None:
    docs = chart(*sets)
    account = named(docs, "ServiceAccount", "rolegate-test")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
    # No standing grant: the account and its bindings are test hooks, not release objects.
    assert account["metadata"]["annotations"] == IDENTITY_HOOK
    found = [
        key
        for key in of_kind(docs, "RoleBinding", "ClusterRoleBinding")
        if key[2].startswith("rolegate-test")
    ]
    assert found == bindings
    for kind, namespace, name in bindings:
        [doc] = [
            d
            for d in docs
            if (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            == (kind, namespace, name)
        ]
        assert (doc["roleRef"], doc["subjects"]) == (USER_ROLE_REF, [TEST_SUBJECT])
        assert doc["metadata"]["annotations"] == IDENTITY_HOOK


def test_the_test_pod_mounts_a_projected_token_of_the_gateways_audience(chart: Any) -> None:
    audience = "gateway.auth.tokenAudience=llm-gateway"
    for values, sets in (((), [audience]), (("node-values.yaml",), ["apiServer.port=1", audience])):
        pod = hook_pod(chart(*sets, values=values))
        spec = pod["spec"]
        assert spec["serviceAccountName"] == "rolegate-test"
        assert spec["automountServiceAccountToken"] is False  # only the projected token
        assert spec["volumes"] == [
            {
                "name": "token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "audience": "llm-gateway",
                                "expirationSeconds": 600,
                            }
                        }
                    ]
                },
            }
        ]
        box = container(pod)
        assert box["volumeMounts"] == [
            {"name": "token", "mountPath": "/var/run/secrets/rolegate", "readOnly": True}
        ]
        env = {e["name"]: e["value"] for e in box["env"]}
        assert env["TOKEN_FILE"] == "/var/run/secrets/rolegate/token"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["gateway.auth.mode=keys"], "at '/gateway/auth/mode': value must be one of"),
        (
            ["gateway.auth.tokenTTL=-1"],
            "at '/gateway/auth/tokenTTL': exclusiveMinimum: got -1, want 0",
        ),
        # The gateway refuses 0 (its pod would crash-loop): so does the schema.
        *[
            ([f"gateway.auth.{ttl}=0"], f"at '/gateway/auth/{ttl}': exclusiveMinimum: got 0")
            for ttl in ("tokenTTL", "allowedTTL", "deniedTTL")
        ],
        (["gateway.auth.tokenAudience="], "at '/gateway/auth/tokenAudience': minLength"),
        (["gateway.auth.userClusterRole.name=Users"], "'Users' does not match pattern"),
        (["gateway.auth.tokenTtl=5"], "additional properties 'tokenTtl' not allowed"),
        (["gateway.metrics.clientLabel=yes"], "got string, want boolean"),
    ],
)
def test_bad_auth_values_are_refused(
    k8s_bin_dir: Path, helm_home: Path, sets: list[str], message: str
) -> None:
    done = render(k8s_bin_dir, helm_home, sets=sets, check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stdout == ""


# -- the test hook's script, run here ----------------------------------------------------------


MODELS = b'{"object": "list", "data": [{"id": "extract"}]}'


def _handler(*, require_token: bool, models: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler answering /readyz, and /v1/models as the gateway does: with
    ``require_token``, 200 only with ``Authorization: Bearer <TOKEN>`` (401 without a token,
    403 with another); without, 200 only when no token is sent. Its 200 body: ``models``."""

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            if self.path == "/readyz":
                self._answer(200, b'{"status": "ready"}')
            elif self.path != "/v1/models":
                self._answer(404, b"{}")
            elif require_token and auth is None:
                self._answer(401, b'{"error": {"code": "invalid_api_key"}}')
            elif require_token and auth != f"Bearer {TOKEN}":
                self._answer(403, b'{"error": {"code": "permission_denied"}}')
            elif not require_token and auth is not None:
                self._answer(400, b'{"error": "a token was sent"}')
            else:
                self._answer(200, models)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    return Gateway


@pytest.fixture
def fake_gateway() -> Iterator[Callable[..., int]]:
    """``fake_gateway(require_token=..., models=...)`` -> the port of a running
    :func:`_handler` server."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(*, require_token: bool = True, models: bytes = MODELS) -> int:
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), _handler(require_token=require_token, models=models)
        )
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_hook(
    pod: dict[str, Any], port: int, cwd: Path, token: str | None
) -> subprocess.CompletedProcess[str]:
    """The hook's script with the variables the kubelet would give it (the Service's, and
    the projected token at TOKEN_FILE, here a file under ``cwd``)."""
    env = {e["name"]: e["value"] for e in container(pod)["env"]}
    if "TOKEN_FILE" in env:
        assert token is not None
        (cwd / "token").write_text(token + "\n")
        env["TOKEN_FILE"] = str(cwd / "token")
    return subprocess.run(
        [sys.executable, "-c", container(pod)["command"][2]],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **env,
            "GATEWAY_URLS": "env:ROLEGATE_GATEWAY",
            "ROLEGATE_GATEWAY_SERVICE_HOST": "127.0.0.1",
            "ROLEGATE_GATEWAY_SERVICE_PORT": str(port),
        },
        cwd=cwd,
        timeout=60,
    )


def test_the_hook_sends_its_token_and_fails_on_a_refusal(
    chart: Any, fake_gateway: Callable[..., int], tmp_path: Path
) -> None:
    port = fake_gateway()
    pod = hook_pod(chart())
    done = run_hook(pod, port, tmp_path, TOKEN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"ok http://127.0.0.1:{port}: /readyz ready, /v1/models ['extract']\n"
    refused = run_hook(pod, port, tmp_path, "a-token-rbac-does-not-allow")
    assert refused.returncode == 1
    assert f"FAIL http://127.0.0.1:{port}/v1/models: 403" in refused.stderr
    assert "permission_denied" in refused.stderr


def test_the_hook_fails_unless_data_is_a_list(
    chart: Any, fake_gateway: Callable[..., int], tmp_path: Path
) -> None:
    # An empty list passes (a caller with no grant); anything but a list fails, an empty
    # object included, which would otherwise read as no roles.
    pod = hook_pod(chart())
    empty = run_hook(pod, fake_gateway(models=b'{"data": []}'), tmp_path, TOKEN)
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert empty.stdout.endswith("/v1/models []\n")
    for body, why in (
        (b'{"data": {}}', "data is not a list: {}"),
        (b'{"data": null}', "data is not a list: None"),
        (b"{}", "KeyError('data')"),
    ):
        port = fake_gateway(models=body)
        done = run_hook(pod, port, tmp_path, TOKEN)
        assert done.returncode == 1, (body, done.stdout)
        assert f"FAIL http://127.0.0.1:{port}/v1/models: " in done.stderr, (body, done.stderr)
        assert why in done.stderr, (body, done.stderr)


def test_the_hook_sends_no_token_in_mode_none(
    chart: Any, fake_gateway: Callable[..., int], tmp_path: Path
) -> None:
    port = fake_gateway(require_token=False)
    done = run_hook(hook_pod(chart("gateway.auth.mode=none")), port, tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/v1/models ['extract']" in done.stdout


def test_test_hook_is_a_test_pod_of_the_same_image(chart: Any) -> None:
    [hook] = by_kind(chart(), "Pod")
    assert hook["metadata"]["annotations"] == {
        "helm.sh/hook": "test",
        "helm.sh/hook-weight": "0",  # after its ServiceAccount and bindings (-1)
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    }
    assert hook["spec"]["restartPolicy"] == "Never"
    box = container(hook)
    assert box["command"][:2] == ["python3", "-c"]
    env = {e["name"]: e["value"] for e in box["env"]}
    assert env["GATEWAY_URLS"].split() == [
        "env:ROLEGATE_GATEWAY",
        f"http://rolegate-gateway.{NS}.svc:80",
    ]


def test_test_hook_fails_when_no_gateway_answers(chart: Any, tmp_path: Path) -> None:
    [hook] = by_kind(chart(), "Pod")
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "GATEWAY_URLS": "env:ROLEGATE_GATEWAY",
        "ROLEGATE_GATEWAY_SERVICE_HOST": "127.0.0.1",
        "ROLEGATE_GATEWAY_SERVICE_PORT": str(port),
    }
    done = subprocess.run(
        [sys.executable, "-c", container(hook)["command"][2]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"skip http://127.0.0.1:{port}" in done.stdout
    assert "FAIL: no gateway answered at env:ROLEGATE_GATEWAY" in done.stderr
