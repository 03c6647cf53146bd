"""Upstream authentication, kept apart from adapters: adapters never hold secrets.

Owns turning a role's resolved :class:`Credentials` into the request headers its binding
expects. SigV4 signing (bedrock) will live beside this module.
"""

from __future__ import annotations

from rolegate_gateway.api import Binding
from rolegate_gateway.config import Credentials

__all__ = ["auth_headers"]


def auth_headers(binding: Binding, credentials: Credentials) -> dict[str, str]:
    """Static auth headers for one role; empty when the role has no key.

    - openai, vllm, ollama: ``Authorization: Bearer KEY``
      (https://platform.openai.com/docs/api-reference/authentication).
    - azure_openai: ``api-key: KEY``
      (https://learn.microsoft.com/azure/ai-services/openai/reference#authentication).
    - anthropic: ``x-api-key: KEY`` (https://docs.anthropic.com/en/api/overview).

    Raises:
        ValueError: the binding authenticates per request (bedrock's SigV4).
    """
    if credentials.api_key is None:
        return {}
    key = credentials.api_key.get_secret_value()
    match binding:
        case Binding.OPENAI | Binding.VLLM | Binding.OLLAMA:
            return {"Authorization": f"Bearer {key}"}
        case Binding.AZURE_OPENAI:
            return {"api-key": key}
        case Binding.ANTHROPIC:
            return {"x-api-key": key}
        case _:
            raise ValueError(f"binding {binding} does not use static auth headers")
