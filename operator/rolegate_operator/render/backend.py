"""Backends of ``serve:`` roles: the Deployment, Service and cache PVC the operator runs.

Pure: a :class:`Backend` in, manifests (plain dicts, camelCase) out; no I/O, no kopf.

Roles of one namespace whose binding, model and ``serve`` spec are the same (after defaults)
share one backend, named from that content (:func:`backend_name`), so two roles never start
two copies of one model. Each such role is an owner of every object of the backend
(``ownerReferences``, none of them the controller): Kubernetes' garbage collector deletes the
backend when its last role goes
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents), and
a role whose spec changed moves to another backend (the reconciler deletes one no role wants).

What is rendered, and why (../shared/reference/kubernetes-packaging.md, recommendation (2)):

- GPUs as ``resources.limits[serve.gpuResource]`` (the API server copies an extended
  resource's limit to its request) and, with gpus > 0, a toleration of that resource's
  ``NoSchedule`` taint (as ollama-helm does), then the user's tolerations;
- strategy ``Recreate`` with gpus > 0 or a ReadWriteOnce cache: a rolling update would wait
  forever for the GPU or volume the old pod holds (LLMKube #192, ollama-helm #104);
- ``/dev/shm`` as a memory emptyDir of ``serve.shmSize`` (PyTorch's workers share tensors there);
- probes sized for model loading: a startup probe whose budget is ``serve.startupSeconds``;
  vLLM's ``/health`` answers only once the engine is up; Ollama's ``GET /`` answers before any
  model is there, so its startup probe pulls the model in one ``sh -c`` script (KubeAI #721:
  an argv split across ``-c`` ran ``ollama`` with no arguments and passed at once) and its
  readiness probe proves the model is present (``ollama show``);
- no ``runAsNonRoot`` (both engines' images run as root), but no privilege escalation and no
  capabilities; no ServiceAccount token and no Service environment variables (a Service named
  ``vllm`` would set ``VLLM_PORT``, which vLLM reads as its own setting).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from rolegate_gateway.api import API_VERSION, DEFAULT_SERVE_IMAGES, KIND, Binding, ServeSpec
from rolegate_gateway.roles import BACKEND_PORT
from rolegate_operator.render.secret import MANAGED_BY

__all__ = [
    "BACKEND_LABEL",
    "COMPONENT",
    "FIELD_MANAGER",
    "PORT_NAME",
    "SELECTOR",
    "Backend",
    "Owner",
    "backend_name",
    "deployment",
    "difference",
    "manifests",
    "ollama_startup_script",
    "pvc",
    "service",
]

#: The label that names a backend on each of its objects and pods (the Service's selector).
BACKEND_LABEL: Final = "rolegate.dev/backend"
#: ``app.kubernetes.io/component`` of every backend object.
COMPONENT: Final = "model-server"
#: The label selector of every backend object the operator runs.
SELECTOR: Final = (
    f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
)
#: The field manager of the operator's server-side applies.
FIELD_MANAGER: Final = "rolegate-operator"
#: The name of the engine's port on the container and the Service.
PORT_NAME: Final = "http"
#: Where each engine keeps its models (the cache volume's mount point).
_MODEL_DIRS: Final = {Binding.VLLM: "/root/.cache/huggingface", Binding.OLLAMA: "/root/.ollama"}
#: Seconds a deleted pod keeps serving before its engine is stopped (its preStop hook):
#: longer than an EndpointSlice change takes to reach the gateways.
_PRE_STOP_S: Final = 10
#: Seconds between startup probes; the startup budget is this times the failure threshold.
_STARTUP_PERIOD_S: Final = 10


@dataclass(frozen=True, slots=True)
class Owner:
    """A role that uses a backend: its name and uid (an owner reference)."""

    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend: where it runs, what it serves, and the roles that own it."""

    namespace: str
    name: str
    binding: Binding
    model: str
    serve: ServeSpec
    owners: tuple[Owner, ...] = ()

    @property
    def image(self) -> str:
        """``serve.image``, or the engine's pinned default."""
        return self.serve.image or DEFAULT_SERVE_IMAGES[self.binding]

    @property
    def cache_claim(self) -> str | None:
        """The name of the cache PVC, or None without ``serve.cache``."""
        return f"{self.name}-cache" if self.serve.cache is not None else None


def backend_name(binding: Binding, model: str, serve: ServeSpec) -> str:
    """A stable DNS-1035 label (<= 63 characters) for the backend of this content:
    ``rolegate-<model slug, <= 40>-<10 hex digits of sha256 of binding, model and serve>``.
    ``serve`` counts with its defaults filled in, so a spec that spells a default out names
    the same backend as one that leaves it out; ``serve.replicas`` does not count (scaling
    changes the backend in place: its pods, cache and GPUs stay)."""
    content = json.dumps(
        {
            "binding": binding.value,
            "model": model,
            "serve": serve.model_dump(mode="json", exclude={"replicas"}),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(content.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40].strip("-") or "model"
    return f"rolegate-{slug}-{digest}"


def _labels(backend: Backend) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": backend.binding.value,
        "app.kubernetes.io/instance": backend.name,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "rolegate",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        BACKEND_LABEL: backend.name,
    }


def _metadata(backend: Backend, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": backend.namespace,
        "labels": _labels(backend),
        "ownerReferences": [
            {"apiVersion": API_VERSION, "kind": KIND, "name": o.name, "uid": o.uid}
            for o in sorted(backend.owners, key=lambda o: (o.name, o.uid))
        ],
    }


def ollama_startup_script(model: str) -> str:
    """The startup probe's one shell script for Ollama: wait for the server, pull ``model``
    unless it is there, then prove it is (exit 0 only then). It runs once (failure
    threshold 1) under a timeout of ``serve.startupSeconds``: a pull that hangs fails the
    probe then and the container restarts. ``model`` is shell-quoted: a tag such as
    ``llama3.2:1b`` or a name with a space cannot split the command."""
    quoted = shlex.quote(model)
    return (
        "until ollama list >/dev/null 2>&1; do sleep 1; done; "
        f"ollama show {quoted} >/dev/null 2>&1 || ollama pull {quoted} "
        f"&& ollama show {quoted} >/dev/null"
    )


def _http_probe(*, period_s: int, failures: int, timeout_s: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": PORT_NAME},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": timeout_s,
    }


def _engine(backend: Backend) -> dict[str, Any]:
    """The engine-specific part of the container: command, args, env, probes."""
    serve, model = backend.serve, backend.model
    startup_failures = math.ceil(serve.startup_seconds / _STARTUP_PERIOD_S)
    if backend.binding is Binding.VLLM:
        args = [model, "--served-model-name", model, "--host", "0.0.0.0"]
        args += ["--port", str(BACKEND_PORT)]
        if serve.gpus > 1:
            args += ["--tensor-parallel-size", str(serve.gpus)]
        return {
            "command": ["vllm", "serve"],
            "args": args + list(serve.args),
            "env": [{"name": "HF_HOME", "value": _MODEL_DIRS[Binding.VLLM]}, *serve.env],
            "startupProbe": _http_probe(period_s=_STARTUP_PERIOD_S, failures=startup_failures),
            "readinessProbe": _http_probe(period_s=5, failures=3),
            "livenessProbe": _http_probe(period_s=30, failures=3),
        }
    return {
        "command": ["ollama", "serve"],
        **({"args": list(serve.args)} if serve.args else {}),  # [] would read back as absent
        "env": [
            {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{BACKEND_PORT}"},
            {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},  # keep the model loaded
            *serve.env,
        ],
        "startupProbe": {
            "exec": {"command": ["/bin/sh", "-c", ollama_startup_script(model)]},
            "periodSeconds": _STARTUP_PERIOD_S,
            "failureThreshold": 1,  # one run is the whole budget: the script waits itself
            "timeoutSeconds": serve.startup_seconds,
        },
        "readinessProbe": {
            "exec": {"command": ["ollama", "show", model]},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 10,
        },
        "livenessProbe": {
            "httpGet": {"path": "/", "port": PORT_NAME},
            "periodSeconds": 30,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
    }


def _tolerations(serve: ServeSpec) -> list[dict[str, Any]]:
    auto = {"key": serve.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
    own = [dict(t) for t in serve.tolerations]
    return ([auto] if serve.gpus > 0 and auto not in own else []) + own


def _strategy(serve: ServeSpec) -> dict[str, Any]:
    rwo_cache = serve.cache is not None and serve.cache.access_mode == "ReadWriteOnce"
    if serve.gpus > 0 or rwo_cache:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def deployment(backend: Backend) -> dict[str, Any]:
    """The backend's apps/v1 Deployment: ``serve.replicas`` pods of one container ``server``
    listening on :data:`~rolegate_gateway.roles.BACKEND_PORT` (port name ``http``)."""
    serve = backend.serve
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": serve.shm_size}}
    ]
    if backend.cache_claim is not None:
        mounts.append({"name": "cache", "mountPath": _MODEL_DIRS[backend.binding]})
        volumes.append(
            {"name": "cache", "persistentVolumeClaim": {"claimName": backend.cache_claim}}
        )
    container: dict[str, Any] = {
        "name": "server",
        "image": backend.image,
        **_engine(backend),
        "ports": [{"name": PORT_NAME, "containerPort": BACKEND_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        # A deleted pod keeps serving while the gateways learn from its EndpointSlice that it
        # is terminating; only then does the engine get SIGTERM (calls sent meanwhile and
        # calls in flight are answered, not refused or cut).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(_PRE_STOP_S)]}}},
    }
    if serve.gpus > 0:
        container["resources"] = {"limits": {serve.gpu_resource: str(serve.gpus)}}
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The preStop wait, then the engine's own shutdown (its calls in flight finish).
        "terminationGracePeriodSeconds": _PRE_STOP_S + 30,
        "containers": [container],
        "volumes": volumes,
    }
    tolerations = _tolerations(serve)
    if tolerations:
        pod["tolerations"] = tolerations
    if serve.node_selector:
        pod["nodeSelector"] = dict(serve.node_selector)
    if serve.affinity:
        pod["affinity"] = dict(serve.affinity)
    if serve.runtime_class_name:
        pod["runtimeClassName"] = serve.runtime_class_name
    if serve.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in serve.image_pull_secrets]
    selector = {BACKEND_LABEL: backend.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(backend, backend.name),
        "spec": {
            "replicas": serve.replicas,
            "selector": {"matchLabels": selector},
            "strategy": _strategy(serve),
            # Past the startup budget, not before: a slow download is progress.
            "progressDeadlineSeconds": serve.startup_seconds + 300,
            "template": {"metadata": {"labels": _labels(backend)}, "spec": pod},
        },
    }


def service(backend: Backend) -> dict[str, Any]:
    """The backend's ClusterIP Service: port ``http`` to the pods' ``http``. The gateway
    balances over its EndpointSlices' ready pods; its address is the fallback."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(backend, backend.name),
        "spec": {
            "type": "ClusterIP",
            "selector": {BACKEND_LABEL: backend.name},
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": BACKEND_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def pvc(backend: Backend) -> dict[str, Any] | None:
    """The model cache PersistentVolumeClaim, or None without ``serve.cache``. Owned like
    the rest: deleting the backend deletes the cached model."""
    cache = backend.serve.cache
    if cache is None or backend.cache_claim is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(backend, backend.cache_claim),
        "spec": spec,
    }


def manifests(backend: Backend) -> list[dict[str, Any]]:
    """Every object of the backend, in the order they are applied (the claim first)."""
    claim = pvc(backend)
    return [*([claim] if claim is not None else []), service(backend), deployment(backend)]


def _owners(refs: object) -> set[str]:
    if not isinstance(refs, Sequence):
        return set()
    return {str(r.get("uid")) for r in refs if isinstance(r, Mapping)}


#: Suffixes of a Kubernetes quantity and their factors
#: (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/).
_SUFFIXES: Final = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "": Decimal(1),
    "m": Decimal("0.001"),
    "u": Decimal("0.000001"),
    "n": Decimal("0.000000001"),
}
_QUANTITY: Final = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE]?)$")


def _quantity(text: str) -> Decimal | None:
    """The value of a quantity such as ``1Gi``, ``500m`` or ``1e3``; None if not one."""
    found = _QUANTITY.match(text)
    if found is None:
        return None
    number, suffix = found.groups()
    if suffix[:1] in ("e", "E"):
        return Decimal(number) * Decimal(10) ** int(suffix[1:])
    return Decimal(number) * _SUFFIXES[suffix]


def _same_quantity(desired: str, live: str) -> bool:
    """Two strings that are one Kubernetes quantity (the API server stores ``1024Mi`` as
    ``1Gi``)."""
    value = _quantity(desired)
    return value is not None and value == _quantity(live)


def difference(desired: Any, live: Any, *, path: str = "") -> str | None:
    """The path of the first field of ``desired`` that ``live`` (an object as the API
    server returns it) lacks or holds otherwise, e.g. ``.spec.replicas``; None when it has
    them all. Fields only ``live`` has (the server's defaults, status, metadata) do not
    count, nor empty ones only ``desired`` has (``""``, ``[]``, ``{}``: the server leaves
    them out); quantities compare by value; lists compare item by item, same length; owner
    references compare as a set of uids (their order is not meaningful)."""
    if live is None and desired in ("", [], {}):
        return None
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        return None if _same_quantity(desired, live) else path
    if path == ".metadata.ownerReferences":
        return path if _owners(desired) != _owners(live) else None
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return path
        for key, value in desired.items():
            found = difference(value, live.get(key), path=f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for index, (want, held) in enumerate(zip(desired, live, strict=True)):
            found = difference(want, held, path=f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return path if desired != live else None
