"""The backend renderer (no cluster): golden manifests for a vLLM and an Ollama role, the
shared backend's name, GPU tolerations and strategy choices, probe budgets, the Ollama
startup script run by a real shell against a fake ``ollama``, and ``BackendReady``'s reasons.
Golden files: tests/testdata/backends/ (``ROLEGATE_UPDATE_GOLDEN=1`` rewrites them; review
the diff)."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegate_gateway.api import Binding, ConditionStatus, ServeSpec
from rolegate_operator import render
from rolegate_operator.render import backend, backend_status
from rolegate_operator.render.backend import Backend, Owner

GOLDEN = Path(__file__).parents[1] / "testdata" / "backends"


def make(
    binding: Binding = Binding.VLLM, model: str = "meta-llama/Llama-3.1-8B", **serve: Any
) -> Backend:
    spec = ServeSpec.model_validate(serve)
    return Backend(
        namespace="team",
        name=backend.backend_name(binding, model, spec),
        binding=binding,
        model=model,
        serve=spec,
        owners=(Owner("query", "uid-2"), Owner("extract", "uid-1")),
    )


def golden(name: str, docs: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump_all(docs, sort_keys=False, width=100)
    if os.environ.get("ROLEGATE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; rerun with ROLEGATE_UPDATE_GOLDEN=1"


def test_vllm_backend_matches_its_golden_manifests() -> None:
    golden(
        "vllm",
        backend.manifests(
            make(
                gpus=2,
                cache={"size": "100Gi", "storageClassName": "fast"},
                nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                args=["--max-model-len=8192"],
                env=[
                    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}
                ],
                imagePullSecrets=[{"name": "regcred"}],
                runtimeClassName="nvidia",
            )
        ),
    )


def test_ollama_backend_matches_its_golden_manifests() -> None:
    golden("ollama", backend.manifests(make(Binding.OLLAMA, "llama3.2:1b", gpus=0)))


def test_a_backend_is_named_by_its_content_with_defaults_filled_in() -> None:
    plain = make()
    spelled = make(replicas=1, gpus=1, gpuResource="nvidia.com/gpu", shmSize="8Gi")
    assert plain.name == spelled.name
    assert plain.name.startswith("rolegate-meta-llama-llama-3-1-8b-")
    assert make(gpus=2).name != plain.name
    assert make(model="other").name != plain.name
    assert make(Binding.OLLAMA).name != plain.name
    long = make(model="x" * 200 + "/Ü")
    assert len(long.name) <= 63
    assert long.name.replace("-", "").isalnum()


def test_owner_references_name_every_role_and_no_controller() -> None:
    owners = backend.deployment(make())["metadata"]["ownerReferences"]
    assert [(o["name"], o["uid"]) for o in owners] == [("extract", "uid-1"), ("query", "uid-2")]
    assert all(o["kind"] == "LLMRole" and "controller" not in o for o in owners)


@pytest.mark.parametrize(
    ("serve", "tolerations"),
    [
        ({"gpus": 1}, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        ({"gpus": 0}, None),
        (
            {
                "gpus": 1,
                "gpuResource": "nvidia.com/mig-1g.10gb",
                "tolerations": [{"key": "spot", "operator": "Exists"}],
            },
            [
                {"key": "nvidia.com/mig-1g.10gb", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Exists"},
            ],
        ),
        (  # the user's own copy of the automatic one is not doubled
            {
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ]
            },
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        ),
    ],
)
def test_gpu_tolerations(serve: dict[str, Any], tolerations: list[dict[str, str]] | None) -> None:
    pod = backend.deployment(make(**serve))["spec"]["template"]["spec"]
    assert pod.get("tolerations") == tolerations


@pytest.mark.parametrize(
    ("serve", "strategy"),
    [
        ({"gpus": 1}, "Recreate"),
        ({"gpus": 0, "cache": {}}, "Recreate"),  # ReadWriteOnce
        ({"gpus": 0, "cache": {"accessMode": "ReadWriteMany"}, "replicas": 3}, "RollingUpdate"),
        ({"gpus": 0}, "RollingUpdate"),
    ],
)
def test_recreate_when_a_gpu_or_a_single_node_volume_is_held(
    serve: dict[str, Any], strategy: str
) -> None:
    spec = backend.deployment(make(**serve))["spec"]["strategy"]
    assert spec["type"] == strategy
    if strategy == "RollingUpdate":  # never a surge: it would wait for what the old pod holds
        assert spec["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_the_startup_budget_follows_startup_seconds() -> None:
    spec = backend.deployment(make(Binding.VLLM, startupSeconds=3600))["spec"]
    probe = spec["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 3600
    assert spec["progressDeadlineSeconds"] > 3600
    # Ollama's probe is one run of the pull script: its timeout is the whole budget.
    spec = backend.deployment(make(Binding.OLLAMA, startupSeconds=3600))["spec"]
    probe = spec["template"]["spec"]["containers"][0]["startupProbe"]
    assert (probe["failureThreshold"], probe["timeoutSeconds"]) == (1, 3600)
    assert spec["progressDeadlineSeconds"] > 3600


def test_scaling_keeps_the_backend() -> None:
    assert make(replicas=1).name == make(replicas=3).name == make(replicas=0).name


def test_tensor_parallel_size_only_with_several_gpus() -> None:
    def args(gpus: int) -> list[str]:
        container = backend.deployment(make(gpus=gpus))["spec"]["template"]["spec"]["containers"][0]
        return list(container["args"])

    assert "--tensor-parallel-size" not in args(1)
    assert args(4)[-2:] == ["--tensor-parallel-size", "4"]


def fake_ollama(tmp_path: Path, *, pull_works: bool = True) -> Path:
    """A fake ``ollama`` that logs its argv; ``show`` succeeds once the model was pulled."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ollama"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{tmp_path}/calls"\n'
        'case "$1" in\n'
        "  list) exit 0 ;;\n"
        f'  show) test -f "{tmp_path}/pulled-$2" ;;\n'
        f'  pull) {"touch" if pull_works else "false"} "{tmp_path}/pulled-$2" ;;\n'
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def run_probe(tmp_path: Path, bin_dir: Path, model: str) -> int:
    probe = backend.deployment(make(Binding.OLLAMA, model))["spec"]["template"]["spec"]
    command = probe["containers"][0]["startupProbe"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert len(command) == 3  # one script: an argv split after -c would be lost (KubeAI #721)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(command, env=env, check=False, timeout=10).returncode


def test_the_ollama_startup_probe_pulls_then_proves_the_model(tmp_path: Path) -> None:
    bin_dir = fake_ollama(tmp_path)
    assert run_probe(tmp_path, bin_dir, "llama3.2:1b") == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["list", "show llama3.2:1b", "pull llama3.2:1b", "show llama3.2:1b"]
    assert run_probe(tmp_path, bin_dir, "llama3.2:1b") == 0  # present: no second pull
    again = (tmp_path / "calls").read_text().splitlines()[4:]
    assert again == ["list", "show llama3.2:1b", "show llama3.2:1b"]


def test_the_ollama_startup_probe_fails_when_the_pull_fails(tmp_path: Path) -> None:
    bin_dir = fake_ollama(tmp_path, pull_works=False)
    assert run_probe(tmp_path, bin_dir, "no-such-model") != 0


def test_a_model_name_cannot_inject_shell(tmp_path: Path) -> None:
    bin_dir = fake_ollama(tmp_path)
    assert run_probe(tmp_path, bin_dir, "m; touch hacked") == 0
    assert not (Path.cwd() / "hacked").exists()
    assert "pull m; touch hacked" in (tmp_path / "calls").read_text()


def test_the_ollama_readiness_probe_proves_the_model_not_just_the_server() -> None:
    container = backend.deployment(make(Binding.OLLAMA, "qwen3:4b"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["readinessProbe"]["exec"]["command"] == ["ollama", "show", "qwen3:4b"]


# -- BackendReady --------------------------------------------------------------------------


def deployment_state(available: int = 0, replicas: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, "availableReplicas": available, **status},
    }


def pod(
    *, waiting: dict[str, Any] | None = None, scheduled: dict[str, Any] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": []}
    if scheduled is not None:
        status["conditions"].append({"type": "PodScheduled", **scheduled})
    if waiting is not None:
        status["containerStatuses"] = [
            {
                "name": "server",
                "image": "vllm/vllm-openai:nope",
                "state": {"waiting": waiting},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                "restartCount": 4,
            }
        ]
    return {"metadata": {"name": "p-1"}, "status": status}


UNSCHEDULABLE = {
    "status": "False",
    "reason": "Unschedulable",
    "message": (
        "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint"
    ),
}


@pytest.mark.parametrize(
    ("state", "status", "reason", "says"),
    [
        (backend_status.BackendState(), "Unknown", "Progressing", "being created"),
        (
            backend_status.BackendState(deployment_state(available=1, replicas=2)),
            "True",
            "Available",
            "1/2 pods",
        ),
        (
            backend_status.BackendState(deployment_state(replicas=0)),
            "False",
            "ScaledToZero",
            "replicas is 0",
        ),
        (
            backend_status.BackendState(
                deployment_state(),
                (pod(waiting={"reason": "ImagePullBackOff", "message": "not found"}),),
            ),
            "False",
            "ImagePullFailed",
            "vllm/vllm-openai:nope: not found",
        ),
        (
            backend_status.BackendState(
                deployment_state(), (pod(waiting={"reason": "CrashLoopBackOff"}),)
            ),
            "False",
            "CrashLooping",
            "exit code 1, 4 restarts",
        ),
        (
            backend_status.BackendState(deployment_state(), (pod(scheduled=UNSCHEDULABLE),)),
            "False",
            "Unschedulable",
            "2 Insufficient nvidia.com/gpu",
        ),
        (
            backend_status.BackendState(
                deployment_state(),
                (),
                {
                    "metadata": {"name": "c"},
                    "spec": {"storageClassName": "fast"},
                    "status": {"phase": "Pending"},
                },
            ),
            "False",
            "CachePending",
            "StorageClass 'fast'",
        ),
        (
            backend_status.BackendState(
                deployment_state(
                    conditions=[
                        {
                            "type": "Progressing",
                            "reason": "ProgressDeadlineExceeded",
                            "message": "timed out",
                        }
                    ]
                )
            ),
            "False",
            "ProgressDeadlineExceeded",
            "timed out",
        ),
        (
            backend_status.BackendState(deployment_state(readyReplicas=0)),
            "False",
            "Progressing",
            "0/1 pods ready",
        ),
    ],
)
def test_backend_ready_reasons(
    state: backend_status.BackendState, status: str, reason: str, says: str
) -> None:
    check = backend_status.backend_check("b", state)
    assert (check.status, check.reason) == (ConditionStatus(status), reason)
    assert says in check.message


def test_difference_reads_quantities_by_value_and_empty_as_absent() -> None:
    desired = {"spec": {"size": "1024Mi", "env": [{"name": "A", "value": ""}], "args": []}}
    live = {"spec": {"size": "1Gi", "env": [{"name": "A"}]}}
    assert backend.difference(desired, live) is None
    assert backend.difference({"size": "1.5Gi"}, {"size": "1536Mi"}) is None
    assert backend.difference({"size": "2Gi"}, {"size": "1Gi"}) == ".size"
    assert backend.difference({"image": "a:1"}, {"image": "a:2"}) == ".image"


def test_difference_ignores_server_defaults_but_not_changes() -> None:
    desired = backend.deployment(make())
    live = yaml.safe_load(yaml.safe_dump(desired))
    live["metadata"]["resourceVersion"] = "7"
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = (
        "/dev/termination-log"
    )
    live["metadata"]["ownerReferences"].reverse()
    assert backend.difference(desired, live) is None
    live["spec"]["replicas"] = 3
    assert backend.difference(desired, live) == ".spec.replicas"


# -- serve: roles in the rendered config ----------------------------------------------------


def served_role(model: str, **serve: Any) -> render.RoleObject:
    spec = {"binding": "vllm", "model": model, "serve": {"gpus": 0, **serve}}
    return render.RoleObject("team", "chat", "uid-chat", 1, "2026-12-01T00:00:00Z", spec, {})


AVAILABLE = {
    "metadata": {"generation": 1},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 1, "availableReplicas": 1},
}
STARTING = {**AVAILABLE, "status": {"observedGeneration": 1, "availableReplicas": 0}}


def render_with(role: render.RoleObject, states: Any, previous: Any = None) -> render.Rendered:
    return render.render([role], {}, config_secret="ns/cfg", backends=states, previous=previous)


def test_a_rebind_holds_the_served_backend_until_the_new_one_is_available() -> None:
    first = render_with(served_role("org/a"), {})
    [old] = first.backends
    new_role = served_role("org/b")
    new_name = backend.backend_name(Binding.VLLM, "org/b", ServeSpec(gpus=0))
    for old_state in (AVAILABLE, STARTING):  # held even while the old one has a bad moment
        held = render_with(
            new_role,
            {("team", old.name): backend_status.BackendState(deployment=old_state)},
            first.config,
        )
        [out] = held.outcomes
        assert (out.ready.status, out.ready.reason) == ("False", "RollingOut")
        assert out.config is not None
        assert out.config.upstream.model == "org/a"
        assert out.shown_backend == old.name
        assert held.retained == {("team", old.name)}
        assert [b.name for b in held.backends] == [new_name]  # the new one is applied
    moved = render_with(
        new_role,
        {
            ("team", old.name): backend_status.BackendState(deployment=AVAILABLE),
            ("team", new_name): backend_status.BackendState(deployment=AVAILABLE),
        },
        first.config,
    )
    [out] = moved.outcomes
    assert (out.ready.reason, out.shown_backend) == ("Served", new_name)
    assert out.config is not None
    assert out.config.upstream.model == "org/b"
    assert moved.retained == frozenset()


def test_backends_not_read_keep_the_served_entry_and_say_unknown() -> None:
    first = render_with(served_role("org/a"), {})
    again = render_with(served_role("org/b"), None, first.config)
    [out] = again.outcomes
    assert (out.ready.status, out.ready.reason) == ("Unknown", "BackendUnknown")
    assert again.config == first.config  # nothing moves on a pass that could not see


def test_roles_sharing_a_backend_get_the_most_replicas() -> None:
    a = served_role("org/a", replicas=1)
    b = dataclasses.replace(served_role("org/a", replicas=3), name="b", uid="uid-b")
    [shared] = render.render([a, b], {}, config_secret="ns/cfg", backends={}).backends
    assert shared.serve.replicas == 3
    assert len(shared.owners) == 2


def test_refused_objects_and_a_replica_failure_are_reasons() -> None:
    refused = backend_status.BackendState(apply_error="HTTP 403 exceeded quota: gpu")
    assert backend_status.backend_check("b", refused).reason == "ApplyFailed"
    failing = {
        **STARTING,
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "b-1" is forbidden: violates PodSecurity "restricted"',
                }
            ],
        },
    }
    check = backend_status.backend_check("b", backend_status.BackendState(deployment=failing))
    assert (check.reason, "PodSecurity" in check.message) == ("FailedCreate", True)
