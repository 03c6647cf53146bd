"""Builders of LLMRole and Secret manifests for tests, written as real YAML files."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def role(
    name: str,
    *,
    host: str | None = None,
    binding: str = "vllm",
    model: str = "tiny",
    namespace: str = "default",
    **spec: Any,
) -> dict[str, Any]:
    """An LLMRole manifest; extra keyword arguments are spec fields (camelCase)."""
    body: dict[str, Any] = {"binding": binding, "model": model, **spec}
    if host is not None:
        body["host"] = host
    return {
        "apiVersion": "rolegate.dev/v1alpha1",
        "kind": "LLMRole",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def secret(
    name: str, namespace: str = "default", *, encoded: bool = True, **data: str
) -> dict[str, Any]:
    """A v1 Secret with ``data`` (base64) or ``stringData`` (plain)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
    }
    if encoded:
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        doc["stringData"] = data
    return doc


def write(path: Path, *docs: dict[str, Any]) -> Path:
    """Write ``docs`` as one multi-document YAML file, atomically (rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)
    return path
