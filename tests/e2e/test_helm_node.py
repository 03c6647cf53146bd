"""rolegate installed as users install it, on a real node: the image (tests.fixtures.image)
pushed to a local registry, ``helm install --wait`` of helm/rolegate with
``ci/node-values.yaml`` on the real kubelet + containerd + runc node, which pulls it. Then
the user's journey: the pods run from that image with the chart's ServiceAccounts and say so
in ``kubectl logs``; LLMRoles bound to the llama.cpp server on 127.0.0.1 go Ready; the
official openai SDK on this machine, with a token of a ServiceAccount bound to the chart's
``rolegate-user`` ClusterRole (the chart's default ``gateway.auth.mode: kubernetes``), gets
answers through the gateway pod, streamed and not, while no token gets 401 and a token of an
unbound ServiceAccount 403 (the gateway's TokenReviews and SubjectAccessReviews, through the
chart's ``system:auth-delegator`` binding); a rebind under load loses nothing; ``helm test``
passes (its pod sends a projected token).

The pods run in the node's network namespace (hostNetwork: the harness's API server
advertises loopback, see ci/node-values.yaml), so the gateway pod listens on 127.0.0.1 too.
Skips with the fixtures' reason where a real node cannot run (test_chart_kwok.py covers the
chart there).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from demo import traffic
from devstack.helm_install import Installed, install_on_node
from devstack.k8s.controlplane import ControlPlane
from devstack.llama.server import LlamaServer
from devstack.poll import wait_until
from devstack.registry import Registry
from devstack.stack import install_crd
from tests.fakes import manifests as m
from tests.fixtures.identities import mint
from tests.fixtures.llama import API_KEY

pytestmark = pytest.mark.cluster

ROLES = ("extract", "query")
#: The client: bound to the chart's user ClusterRole in the roles' namespace. The stranger:
#: a ServiceAccount of the same namespace with no binding.
CLIENT, STRANGER = "app", "stranger"


def pods(plane: ControlPlane, ns: str, component: str) -> list[dict[str, Any]]:
    listed = plane.kubectl(
        ["get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"],
        namespace=ns,
    )
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def events(plane: ControlPlane, ns: str, pod: dict[str, Any]) -> str:
    """The Events of ``pod`` (probe failures, restarts), as ``kubectl get events`` prints them."""
    name = pod["metadata"]["name"]
    listed = plane.kubectl(
        ["get", "events", "--field-selector", f"involvedObject.name={name}"],
        namespace=ns,
        check=False,
    )
    return listed.stdout + listed.stderr


def ready(plane: ControlPlane, ns: str, name: str) -> tuple[str, str]:
    body = json.loads(plane.kubectl(["get", "llmrole", name, "-o", "json"], namespace=ns).stdout)
    for cond in (body.get("status") or {}).get("conditions", []):
        if cond["type"] == "Ready":
            return cond["status"], cond["reason"]
    return "", ""


@pytest.fixture(scope="module")
def installed(
    real_node_plane: ControlPlane,
    image_archive: Path,
    crane_bin: Path,
    llama_server: LlamaServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Installed, float]]:
    """The release in a namespace of its own, and the seconds from ``helm install`` to
    every role Ready; uninstalled (and the namespace deleted) after the module."""
    plane = real_node_plane
    install_crd(plane)  # the plane is shared: the CRD is not this release's (one owner)
    work = tmp_path_factory.mktemp("helm-node")
    ns = f"t-helm-{secrets.token_hex(3)}"
    with Registry(disk=work / "registry", log_path=work / "registry.log") as reg:
        reg.wait_serving()
        started = time.monotonic()
        try:
            release = install_on_node(
                plane,
                namespace=ns,
                archive=image_archive,
                registry_host=reg.host,
                install_crds=False,
            )
            manifest = m.write(
                work / "roles.yaml",
                m.secret("llama-creds", namespace=ns, apiKey=API_KEY),
                *(
                    m.role(
                        name,
                        namespace=ns,
                        binding="vllm",
                        model="tiny-a",
                        host=llama_server.url,
                        credentials={"secretRef": {"name": "llama-creds"}},
                    )
                    for name in ROLES
                ),
            )
            plane.kubectl(["apply", "-f", str(manifest)])
            wait_until(
                lambda: all(ready(plane, ns, name) == ("True", "Served") for name in ROLES),
                timeout_s=60,
                what=f"roles {', '.join(ROLES)} Ready",
                poll_s=0.2,
            )
            to_ready = time.monotonic() - started
            wait_until(
                lambda: sorted(release.gateway.status()["roles"]) == sorted(ROLES),
                timeout_s=30,
                what="the gateway pod serving the roles",
                poll_s=0.2,
                tolerate=(OSError, ValueError, KeyError),
            )
            print(
                f"\npush {release.push_s:.1f} s; helm install --wait {release.install_s:.1f} s; "
                f"from helm install to {len(ROLES)} roles Ready {to_ready:.1f} s"
            )
            yield release, to_ready
        finally:  # also after a failed install: nothing of it stays on the shared node
            plane.helm(["uninstall", "rolegate", "--wait"], namespace=ns, check=False)
            plane.kubectl(["delete", "namespace", ns, "--wait=false"], check=False)


def test_the_pods_run_the_pushed_image_with_the_chart_service_accounts(
    installed: tuple[Installed, float], real_node_plane: ControlPlane
) -> None:
    release, _ = installed
    plane, ns = real_node_plane, release.namespace
    for component, account in (("operator", "rolegate-operator"), ("gateway", "rolegate-gateway")):
        (pod,) = pods(plane, ns, component)
        assert pod["spec"]["nodeName"] == "localhost"
        assert pod["spec"]["serviceAccountName"] == account
        (status,) = pod["status"]["containerStatuses"]
        # `helm install --wait` waited for this (the chart's hostNetwork gateway is Recreate)
        assert status["ready"] is True, (
            component,
            status,
            events(plane, ns, pod),
            release.gateway.logs(component),
        )
        assert status["image"] == release.image_ref
        assert status["restartCount"] == 0, release.gateway.logs(component)
    # what a user reads in `kubectl logs`
    assert "wrote gateway config" in release.gateway.logs("operator", lines=200)
    assert re.search(r"serving \d+ roles? on http://0\.0\.0\.0", release.gateway.logs(lines=200))


@pytest.fixture(scope="module")
def client_token(installed: tuple[Installed, float], real_node_plane: ControlPlane) -> str:
    """A token of ServiceAccount :data:`CLIENT`, which a RoleBinding to the chart's
    ``rolegate-user`` ClusterRole lets use the roles of the release's namespace."""
    release, _ = installed
    plane, ns = real_node_plane, release.namespace
    plane.kubectl(["create", "serviceaccount", CLIENT], namespace=ns)
    plane.kubectl(
        [
            "create",
            "rolebinding",
            f"{CLIENT}-rolegate",
            "--clusterrole=rolegate-user",
            f"--serviceaccount={ns}:{CLIENT}",
        ],
        namespace=ns,
    )
    return mint(plane, namespace=ns, account=CLIENT)


def test_the_gateway_pod_refuses_no_token_and_an_unbound_account(
    installed: tuple[Installed, float], real_node_plane: ControlPlane, client_token: str
) -> None:
    release, _ = installed
    plane, ns = real_node_plane, release.namespace
    base_url = f"{release.gateway.url}/v1"
    plane.kubectl(["create", "serviceaccount", STRANGER], namespace=ns)
    stranger = mint(plane, namespace=ns, account=STRANGER)

    async def call(api_key: str) -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as sdk:
            await sdk.chat.completions.create(
                model="extract", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
            )

    # No Authorization header at all (the SDK insists on sending a key).
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(
            {"model": "extract", "messages": [{"role": "user", "content": "Hi"}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as unauthenticated:
        urllib.request.urlopen(request, timeout=10)
    assert unauthenticated.value.code == 401
    assert json.load(unauthenticated.value)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as garbage:
        asyncio.run(call("not-a-token"))
    assert garbage.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        asyncio.run(call(stranger))
    assert denied.value.status_code == 403
    assert denied.value.code == "permission_denied"
    assert f"system:serviceaccount:{ns}:{STRANGER}" in denied.value.message
    assert "extract" in denied.value.message

    async def models(api_key: str) -> list[str]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0) as sdk:
            return sorted([model.id async for model in sdk.models.list()])

    assert asyncio.run(models(client_token)) == sorted(ROLES)


def test_the_openai_sdk_gets_answers_through_the_gateway_pod(
    installed: tuple[Installed, float], client_token: str
) -> None:
    release, _ = installed
    base_url = f"{release.gateway.url}/v1"

    async def ask() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key=client_token, max_retries=0
        ) as sdk:
            whole = await sdk.chat.completions.create(
                model="extract", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
            )
            stream = await sdk.chat.completions.create(
                model="query",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=8,
                stream=True,
            )
            parts, finish = [], ""
            async for chunk in stream:
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
            assert finish in ("stop", "length")
            return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(ask())
    assert whole
    assert streamed


def test_a_rebind_under_load_through_the_gateway_pod_loses_nothing(
    installed: tuple[Installed, float], real_node_plane: ControlPlane, client_token: str
) -> None:
    release, _ = installed
    patch = ["patch", "llmrole", "query", "--type=merge", "-p", '{"spec":{"model":"tiny-b"}}']

    async def rebind() -> None:
        await asyncio.to_thread(real_node_plane.kubectl, patch, namespace=release.namespace)

    result = asyncio.run(
        traffic.rebind_under_load(
            f"{release.gateway.url}/v1",
            "query",
            new_model="tiny-b",
            rebind=rebind,
            api_key=client_token,
        )
    )
    print(
        f"\n{result.sent} requests while rebinding through the pod, {result.failed} failed; "
        f"tiny-b answered {result.switched_after_s:.2f} s after the patch"
    )
    assert result.failed == 0, result.failures[:5]
    assert result.by_model["tiny-a"] > 0
    assert result.by_model["tiny-b"] > 0


def test_helm_test_passes(
    installed: tuple[Installed, float], real_node_plane: ControlPlane
) -> None:
    release, _ = installed
    run = real_node_plane.helm(
        ["test", release.release, "--timeout", "2m"], namespace=release.namespace, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"Phase:\s+Succeeded", run.stdout), run.stdout


def test_uninstall_deletes_the_config_secret_with_its_keys_and_keeps_the_roles(
    installed: tuple[Installed, float], real_node_plane: ControlPlane
) -> None:
    """The operator's config Secret (every role's key in it) is owned by the operator's
    ServiceAccount: ``helm uninstall`` deletes that, and the garbage collector the Secret.
    The roles stay (the CRD is kept)."""
    release, _ = installed
    plane, ns = real_node_plane, release.namespace
    got = plane.kubectl(["get", "secret", "rolegate-gateway-config", "-o", "json"], namespace=ns)
    secret = json.loads(got.stdout)
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("ServiceAccount", "rolegate-operator")
    plane.helm(["uninstall", release.release, "--wait"], namespace=ns)
    gone = wait_until(
        lambda: (
            plane.kubectl(
                ["get", "secret", "rolegate-gateway-config"], namespace=ns, check=False
            ).returncode
            != 0
        ),
        timeout_s=60,
        what="the config Secret garbage-collected",
        poll_s=0.5,
    )
    print(f"\nconfig Secret gone {gone:.1f} s after helm uninstall")
    names = plane.kubectl(["get", "llmroles", "-o", "name"], namespace=ns).stdout.split()
    assert sorted(names) == [f"llmrole.rolegate.dev/{role}" for role in sorted(ROLES)]
