"""Upstream health probes: what to ask an upstream to learn whether a role's model is
really served there, and how its answer is judged. Pure (no I/O, no clock).

Owns :class:`State` (the verdict's kind), :class:`Verdict`, :class:`Probe` (one GET and
its dedupe key), :func:`probe_for` (the probe of a role's upstream), :func:`served_models`
(a model list answer read leniently) and :func:`judge` (one role's verdict from one
probe's answer). The checker that runs probes is :mod:`rolegate_gateway.health`.

What each binding is asked (no tokens are spent; the credentials are the role's, built by
``rolegate_gateway.auth.auth_headers`` exactly as for its calls):

- openai, vllm, ollama (its OpenAI API, ``/v1``): ``GET {base_url}/models``
  (https://platform.openai.com/docs/api-reference/models/list), ``data[].id``; Ollama lists
  ``name:tag``, so a model without a tag matches ``name:latest``;
- azure_openai: ``GET {base_url}/openai/models?api-version=V``: it proves the endpoint and
  the key; it lists the resource's models, not its *deployments* (which the calls name), so
  the model is not judged (Reachable, the message says so);
- anthropic: ``GET {base_url}/v1/models?limit=1000`` with ``anthropic-version``
  (https://docs.anthropic.com/en/api/models-list), ``data[].id``; an alias
  (``…-latest``) is not listed, so a model ending in ``-latest`` is not judged;
- bedrock: NotChecked. The cheap signed call that proves credentials and a model id is the
  control plane's ``GetFoundationModel`` (``bedrock.{region}``, not ``bedrock-runtime``):
  it needs the IAM action ``bedrock:GetFoundationModel``, which a least-privilege role
  that may only ``bedrock:InvokeModel*`` lacks (a 403 there would be a false alarm), and
  inference-profile ids and ARNs (``us.anthropic…``) are not foundation model ids. Both
  would turn a healthy role red; the role's own calls report its errors already.

States: ``Reachable`` (2xx and the model listed, or not judged), ``Unreachable`` (no
answer, a timeout, a 3xx/5xx or an unreadable list), ``Unauthorized`` (401/403),
``ModelNotServed`` (2xx, the model not listed: the message lists up to
:data:`MAX_LISTED` of those that are), ``NotChecked`` (not yet, or never for the binding).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from rolegate_gateway.api import ANTHROPIC_VERSION, Binding
from rolegate_gateway.auth import auth_headers
from rolegate_gateway.config import Upstream

__all__ = [
    "MAX_LISTED",
    "MAX_MESSAGE_CHARS",
    "Answer",
    "Probe",
    "State",
    "Verdict",
    "judge",
    "probe_for",
    "served_models",
]

#: Models named in a ModelNotServed message at most.
MAX_LISTED = 20
#: Characters of a verdict's message at most.
MAX_MESSAGE_CHARS = 512


class State(enum.StrEnum):
    """The kind of a verdict (the ``UpstreamReady`` condition's reason)."""

    REACHABLE = "Reachable"
    UNREACHABLE = "Unreachable"
    UNAUTHORIZED = "Unauthorized"
    MODEL_NOT_SERVED = "ModelNotServed"
    NOT_CHECKED = "NotChecked"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One role's upstream health: ``state``, a message without credentials, and when it
    was judged (RFC 3339 UTC; None: never)."""

    state: State
    message: str
    checked_at: str | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """One GET: its absolute URL, headers (credentials included: never shown), what is
    shown of it (``shown``: the URL without query), and whether its answer judges the model
    (``judges_model``). ``key``: the dedupe key, the URL and a digest of the headers:
    roles with equal keys share one probe per interval."""

    url: str
    headers: tuple[tuple[str, str], ...]
    shown: str
    judges_model: bool = True

    @property
    def key(self) -> tuple[str, str]:
        """(URL, sha256 of the headers): the credentials count, never appear."""
        digest = hashlib.sha256(json.dumps(self.headers).encode()).hexdigest()
        return self.url, digest


def probe_for(upstream: Upstream) -> Probe | None:
    """The probe of ``upstream`` (see the module docstring); None: not checked (bedrock)."""
    binding = upstream.binding
    if binding is Binding.BEDROCK:
        return None
    base = upstream.base_url.rstrip("/")
    headers = auth_headers(binding, upstream.credentials)
    match binding:
        case Binding.AZURE_OPENAI:
            version = quote(upstream.azure_api_version or "", safe="")
            path = f"{base}/openai/models"
            return Probe(f"{path}?api-version={version}", _sorted(headers), _shown(path), False)
        case Binding.ANTHROPIC:
            headers["anthropic-version"] = upstream.anthropic_version or ANTHROPIC_VERSION
            path = f"{base}/v1/models"
            return Probe(f"{path}?limit=1000", _sorted(headers), _shown(path))
        case _:
            return Probe(f"{base}/models", _sorted(headers), _shown(f"{base}/models"))


def _shown(url: str) -> str:
    """``url`` without userinfo or query (either may hold a credential), as
    ``runtime.public_url`` shows it (not imported: the operator reads this module)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _sorted(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(headers.items()))


def served_models(body: bytes) -> list[str] | None:
    """The model ids of a list answer (``{"data": [{"id": ...}, ...]}``, OpenAI's and
    Anthropic's shape; also a bare list of such objects, and ``models[].name``/``model``
    as Ollama's native ``/api/tags`` has them); None when ``body`` is no such list.
    Entries without a string id are skipped; a body nested too deeply to parse (a
    ``RecursionError`` in :func:`json.loads`) is no list either."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    items: object
    if isinstance(parsed, list):
        items = parsed
    elif isinstance(parsed, dict):
        items = parsed.get("data")
        if not isinstance(items, list):
            items = parsed.get("models")
    else:
        return None
    if not isinstance(items, list):
        return None
    ids = []
    for item in items:
        if not isinstance(item, dict):
            continue
        for field in ("id", "name", "model"):
            value = item.get(field)
            if isinstance(value, str) and value:
                ids.append(value)
                break
    return ids


@dataclass(frozen=True, slots=True)
class Answer:
    """What one probe got: an HTTP ``status`` and body (``models``: the ids read from a
    2xx, None when unreadable), or ``error`` (no answer: why, without credentials);
    ``detail``: the upstream's error message, scrubbed, for a non-2xx."""

    status: int | None = None
    models: list[str] | None = None
    error: str | None = None
    detail: str = ""


def _listed(models: list[str]) -> str:
    shown = sorted(set(models))
    head = ", ".join(shown[:MAX_LISTED])
    more = len(shown) - MAX_LISTED
    return head + (f" and {more} more" if more > 0 else "") if shown else "none"


def _matches(model: str, served: list[str], binding: Binding) -> bool:
    if model in served:
        return True
    if binding is Binding.OLLAMA and ":" not in model:
        return f"{model}:latest" in served
    return False


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def judge(upstream: Upstream, probe: Probe, answer: Answer, *, at: str) -> Verdict:
    """One role's verdict from its probe's ``answer``, judged at ``at`` (RFC 3339)."""
    where = f"GET {probe.shown}"
    detail = f": {answer.detail}" if answer.detail else ""
    if answer.status is None:
        return Verdict(State.UNREACHABLE, _cut(f"{where}: {answer.error or 'no answer'}"), at)
    if answer.status in (401, 403):
        message = f"{where} answered {answer.status} to the role's credentials{detail}"
        return Verdict(State.UNAUTHORIZED, _cut(message), at)
    if not 200 <= answer.status < 300:
        return Verdict(State.UNREACHABLE, _cut(f"{where} answered {answer.status}{detail}"), at)
    if answer.models is None:
        message = f"{where} answered {answer.status} without a model list"
        return Verdict(State.UNREACHABLE, _cut(message), at)
    model = upstream.model
    if not probe.judges_model:
        message = (
            f"{where} answered {answer.status}; the deployment is not checked "
            "(Azure lists models, not deployments)"
        )
        return Verdict(State.REACHABLE, _cut(message), at)
    if upstream.binding is Binding.ANTHROPIC and model.endswith("-latest"):
        message = f"{where} answered {answer.status}; the alias {model!r} is not checked"
        return Verdict(State.REACHABLE, _cut(message), at)
    if _matches(model, answer.models, upstream.binding):
        return Verdict(State.REACHABLE, _cut(f"{where} lists {model!r}"), at)
    message = f"model {model!r} is not served at {probe.shown}; served: {_listed(answer.models)}"
    return Verdict(State.MODEL_NOT_SERVED, _cut(message), at)
