"""Azure OpenAI: the OpenAI adapter with Azure's URL scheme and ``api-key`` header.

URL: ``{endpoint}/openai/deployments/{deployment}/{operation}?api-version={version}``
(https://learn.microsoft.com/azure/ai-services/openai/reference).
"""

from __future__ import annotations

from urllib.parse import quote

from rolegate_gateway.adapters.base import Endpoint
from rolegate_gateway.adapters.openai import OpenAIAdapter
from rolegate_gateway.config import Upstream

__all__ = ["AzureOpenAIAdapter"]


class AzureOpenAIAdapter(OpenAIAdapter):
    """Differs from :class:`OpenAIAdapter` only in the URL."""

    __slots__ = ()

    def url(self, upstream: Upstream, endpoint: Endpoint) -> str:
        deployment = quote(upstream.azure_deployment or upstream.model, safe="")
        version = quote(upstream.azure_api_version or "", safe="")
        return (
            f"{upstream.base_url}/openai/deployments/{deployment}/{endpoint.value}"
            f"?api-version={version}"
        )
