"""Provider adapters: how a role's request is addressed and shaped for its binding.

One ``match`` picks the adapter for a binding (as Envoy AI Gateway's
``endpointspec.GetTranslator`` does); a binding without one is refused as a config error,
so the previous config keeps serving.
"""

from __future__ import annotations

from rolegate_gateway import errors
from rolegate_gateway.adapters.azure import AzureOpenAIAdapter
from rolegate_gateway.adapters.base import Adapter, Endpoint, UpstreamRequest
from rolegate_gateway.adapters.openai import OpenAIAdapter
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Upstream

__all__ = [
    "SUPPORTED_BINDINGS",
    "Adapter",
    "AzureOpenAIAdapter",
    "Endpoint",
    "OpenAIAdapter",
    "UpstreamRequest",
    "make_adapter",
]

#: Bindings this gateway has an adapter for; the operator leaves roles of other bindings
#: out of the config (and says so in their status) instead of having the config refused.
SUPPORTED_BINDINGS = frozenset({Binding.OPENAI, Binding.VLLM, Binding.OLLAMA, Binding.AZURE_OPENAI})


def make_adapter(upstream: Upstream) -> Adapter:
    """The adapter for one role's upstream.

    Raises:
        errors.ConfigError: the binding has no adapter in this gateway.
    """
    match upstream.binding:
        case Binding.OPENAI | Binding.VLLM | Binding.OLLAMA:
            return OpenAIAdapter(upstream)
        case Binding.AZURE_OPENAI:
            return AzureOpenAIAdapter(upstream)
        case _:
            raise errors.ConfigError(
                f"binding {upstream.binding} is not supported by this gateway yet "
                "(supported: openai, vllm, ollama, azure_openai)"
            )
