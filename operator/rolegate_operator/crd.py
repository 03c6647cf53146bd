"""The LLMRole CustomResourceDefinition, generated from the pydantic models in
``rolegate_gateway.api`` (to be written: see the CRD task)."""

from __future__ import annotations

from typing import Any

__all__ = ["crd"]


def crd() -> dict[str, Any]:
    """The CRD manifest as a dict (apiextensions.k8s.io/v1)."""
    raise NotImplementedError
