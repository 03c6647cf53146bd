"""Translators, one module per binding pair, and the one binding registry.

The registry (:data:`BINDINGS`) maps each binding this gateway serves to how a role wrapper
is built for it: its translator factory (one translator per request;
``rolegate_gateway.translators.base``) and its upstream auth
(``rolegate_gateway.auth``). The supported set, the factory lookup and the error for a
binding the gateway does not know all derive from it (as Envoy AI Gateway's
``endpointspec.GetTranslator``): the operator leaves roles of other bindings out of the
config, and a gateway that meets one in a config anyway (an operator newer than it)
refuses that role alone and serves the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rolegate_gateway import auth, errors
from rolegate_gateway.api import Binding
from rolegate_gateway.config import Upstream
from rolegate_gateway.translators.base import (
    Endpoint,
    ResponseHead,
    Translator,
    TranslatorFactory,
    UpstreamRequest,
    Usage,
)
from rolegate_gateway.translators.openai_to_anthropic import AnthropicTranslator
from rolegate_gateway.translators.passthrough import AzurePassThrough, PassThrough

__all__ = [
    "BINDINGS",
    "SUPPORTED_BINDINGS",
    "BindingEntry",
    "Endpoint",
    "ResponseHead",
    "Translator",
    "TranslatorFactory",
    "UpstreamRequest",
    "Usage",
    "entry",
    "unsupported",
]


@dataclass(frozen=True, slots=True)
class BindingEntry:
    """How one binding's role wrapper is built: ``translators(upstream, role=NAME)`` and
    ``auth(upstream, role=NAME)``. Both may raise ``errors.ConfigError`` for a role they
    cannot serve."""

    translators: Callable[..., TranslatorFactory]
    auth: Callable[..., auth.UpstreamAuth]


def _bedrock(upstream: Upstream, *, role: str) -> TranslatorFactory:
    """The bedrock translator factory, imported with its first role: botocore (its event
    stream decoder, SigV4) costs a gateway without bedrock roles ~10 MB and a fifth more
    objects for every full garbage collection to walk."""
    from rolegate_gateway.translators.openai_to_bedrock import BedrockTranslator

    return BedrockTranslator(upstream, role=role)


def _sigv4(upstream: Upstream, *, role: str) -> auth.UpstreamAuth:
    """SigV4 upstream auth, imported with the first bedrock role (see :func:`_bedrock`)."""
    from rolegate_gateway.auth.sigv4 import sigv4_auth

    return sigv4_auth(upstream, role=role)


#: Every binding this gateway serves.
BINDINGS: dict[str, BindingEntry] = {
    Binding.OPENAI: BindingEntry(PassThrough, auth.api_key_auth),
    Binding.VLLM: BindingEntry(PassThrough, auth.api_key_auth),
    Binding.OLLAMA: BindingEntry(PassThrough, auth.api_key_auth),
    Binding.AZURE_OPENAI: BindingEntry(AzurePassThrough, auth.api_key_auth),
    Binding.ANTHROPIC: BindingEntry(AnthropicTranslator, auth.api_key_auth),
    Binding.BEDROCK: BindingEntry(_bedrock, _sigv4),
}

#: The bindings of :data:`BINDINGS`, for the operator (it leaves roles of others out).
SUPPORTED_BINDINGS = frozenset(Binding(b) for b in BINDINGS)


def unsupported(binding: str) -> str:
    """The message for a binding this gateway does not serve."""
    return f"binding {binding} is not supported by this gateway (supported: {', '.join(BINDINGS)})"


def entry(binding: str) -> BindingEntry:
    """The registry entry of ``binding``.

    Raises:
        errors.ConfigError: the gateway does not serve ``binding``.
    """
    found = BINDINGS.get(binding)
    if found is None:
        raise errors.ConfigError(unsupported(binding))
    return found
