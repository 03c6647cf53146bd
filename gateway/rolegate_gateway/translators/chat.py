"""A client's Chat Completions request, read once into a provider-neutral :class:`Chat`.

Shared by the anthropic and bedrock translators (both take system text apart, alternate
user and assistant turns, and carry tool calls as structured blocks), so each of them
only writes its own wire shapes. Reading follows ../shared/reference/translation.md §2
and §6 and refuses with 400 (``errors.InvalidRequest``, naming the parameter) what a
translated binding cannot honour rather than answering something else:

- messages: ``system``/``developer`` are hoisted in order into :attr:`Chat.system`;
  ``tool`` messages become tool results in a user turn; consecutive turns of one role are
  merged, a user turn's tool results first (Bedrock refuses turns that do not alternate,
  Anthropic wants the results first); empty text parts are dropped; an assistant turn with
  neither text nor tool calls is dropped; a user turn left empty is refused;
- images: a ``data:`` URL is kept as base64 with its media type; an ``https`` URL is kept
  as a URL (the translator decides); ``http`` is refused (the gateway fetches nothing);
- refused: ``n`` > 1, ``logprobs``/``top_logprobs``, ``response_format`` other than
  ``text``, ``audio``/``modalities`` other than text, a tool of a type other than
  ``function``, tool-call arguments that are not a JSON object, ``temperature`` above 1
  (both providers' range is 0-1);
- dropped (hints with no equivalent): ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias``, ``service_tier``, ``store``, ``metadata``,
  ``prediction``, ``reasoning_effort``, and keys OpenAI does not define.

The role's ``options`` fill in what the request leaves out, as for every binding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rolegate_gateway import errors
from rolegate_gateway.intake import Payload, loads_strict

__all__ = [
    "Chat",
    "Image",
    "Text",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolResult",
    "Turn",
    "invalid",
    "read_chat",
]

_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Text:
    """A text part."""

    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image part: base64 ``data`` with its ``media_type`` (from a data URL), or an
    https ``url`` (then ``data`` is None)."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An assistant's call of a tool; ``arguments`` decoded (a JSON object)."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned, for the call ``tool_call_id``: text and image parts."""

    tool_call_id: str
    content: tuple[Text | Image, ...]


Part = Text | Image | ToolCall | ToolResult


@dataclass(slots=True)
class Turn:
    """One turn of the conversation; roles alternate after reading."""

    role: Literal["user", "assistant"]
    parts: list[Part]


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``, ``none``, ``required``, or ``function`` with ``name``."""

    kind: Literal["auto", "none", "required", "function"]
    name: str | None = None


@dataclass(slots=True)
class Chat:
    """A Chat Completions request, read. Token counts and sampling values are None when
    neither the request nor the role's options set them."""

    system: list[str]
    turns: list[Turn]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    @property
    def has_tool_blocks(self) -> bool:
        """The conversation holds tool calls or tool results."""
        return any(isinstance(p, ToolCall | ToolResult) for t in self.turns for p in t.parts)


def invalid(message: str, param: str) -> errors.InvalidRequest:
    """The 400 for a request that cannot be served, naming the parameter at fault."""
    return errors.InvalidRequest(message, param=param)


_REFUSED = {
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "audio": "audio output",
}


def read_chat(payload: Payload, options: Mapping[str, Any], *, binding: str) -> Chat:
    """Read a client's chat request; ``options`` (the role's) fill in what it leaves out.

    Raises:
        errors.InvalidRequest: the request is malformed or asks for what ``binding`` cannot
            do; the message names ``binding`` and the parameter.
    """
    values: dict[str, Any] = dict(options)
    for key, text in payload.members.items():
        values[key] = json.loads(text)
    _refuse_unsupported(values, binding)
    system, turns = _messages(values.get("messages"))
    stream = values.get("stream") is True
    stream_options = values.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    chat = Chat(system=system, turns=turns, stream=stream, include_usage=include_usage)
    chat.max_tokens = _max_tokens(values)
    chat.temperature = _number(values, "temperature", high=1.0, binding=binding)
    chat.top_p = _number(values, "top_p", high=1.0, binding=binding)
    chat.stop = _stop(values.get("stop"))
    chat.tools = _tools(values.get("tools"))
    chat.tool_choice = _tool_choice(values.get("tool_choice"))
    parallel = values.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    chat.parallel_tool_calls = parallel
    user = values.get("user")
    chat.user = user if isinstance(user, str) and user else None
    return chat


def _refuse_unsupported(values: dict[str, Any], binding: str) -> None:
    n = values.get("n")
    if n is not None and n != 1:
        raise invalid(f"n={n!r}: binding {binding} answers one choice only (n=1)", "n")
    for key, what in _REFUSED.items():
        if values.get(key) not in (None, False, 0):
            raise invalid(f"{key}: binding {binding} cannot return {what}", key)
    fmt = values.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise invalid(
            f"response_format {kind!r} is not supported for binding {binding} "
            "(describe the JSON you want in the prompt, or use a tool)",
            "response_format",
        )
    modalities = values.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid(f"modalities: binding {binding} answers text only", "modalities")


def _max_tokens(values: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(f"{key} must be a positive integer", key)
        return value
    return None


def _number(values: dict[str, Any], key: str, *, high: float, binding: str) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
        raise invalid(f"{key} must be a number from 0 to {high:g} for binding {binding}", key)
    return float(value)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop must be a string or a list of strings", "stop")
    return [s for s in items if s]


def _tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("tools must be a list", "tools")
    tools = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise invalid(f"tools[{i}]: only tools of type 'function' are supported", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"tools[{i}].function.name is required", "tools")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise invalid(f"tools[{i}].function.parameters must be a JSON Schema object", "tools")
        description = fn.get("description")
        strict = fn.get("strict")
        tools.append(
            Tool(
                name=name,
                description=description if isinstance(description, str) else None,
                parameters=params,
                strict=strict if isinstance(strict, bool) else None,
            )
        )
    return tools


def _tool_choice(value: Any) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    fn = value.get("function") if isinstance(value, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(name, str):
        return ToolChoice("function", name)
    raise invalid(
        "tool_choice must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def _messages(value: Any) -> tuple[list[str], list[Turn]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[Turn] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}] must be an object", "messages")
        role = message.get("role")
        where = f"messages[{i}]"
        match role:
            case "system" | "developer":
                parts = _parts(message.get("content"), where, images=False)
                system.extend(p.text for p in parts if isinstance(p, Text))
            case "user":
                asked: list[Part] = list(_parts(message.get("content"), where, images=True))
                if not asked:
                    raise invalid(f"{where}: a user message needs non-empty content", "messages")
                _add(turns, "user", asked)
            case "assistant":
                content = message.get("content")
                said: list[Part] = [] if content is None else list(_parts(content, where))
                said.extend(_tool_calls(message.get("tool_calls"), where))
                if said:  # an empty assistant turn is dropped (both providers refuse it)
                    _add(turns, "assistant", said)
            case "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str) or not call_id:
                    raise invalid(f"{where}: a tool message needs tool_call_id", "messages")
                result = tuple(_parts(message.get("content"), where, images=True))
                _add(turns, "user", [ToolResult(call_id, result)])
            case _:
                raise invalid(f"{where}: unknown role {role!r}", "messages")
    if not turns:
        raise invalid("messages: at least one user or assistant message is needed", "messages")
    return system, turns


def _add(turns: list[Turn], role: Literal["user", "assistant"], parts: list[Part]) -> None:
    """Append, merging into the last turn when it has the same role; tool results lead."""
    if turns and turns[-1].role == role:
        merged = turns[-1].parts + parts
        results = [p for p in merged if isinstance(p, ToolResult)]
        turns[-1].parts = results + [p for p in merged if not isinstance(p, ToolResult)]
    else:
        turns.append(Turn(role, parts))


def _parts(content: Any, where: str, *, images: bool = False) -> list[Text | Image]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or a list of parts", "messages")
    parts: list[Text | Image] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{j}]"
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise invalid(f"{at}.{kind} must be a string", "messages")
            if text:
                parts.append(Text(text))
        elif kind == "image_url" and images:
            parts.append(_image(part.get("image_url"), at))
        else:
            raise invalid(f"{at}: parts of type {kind!r} are not supported here", "messages")
    return parts


def _image(value: Any, at: str) -> Image:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        raise invalid(f"{at}.image_url.url must be a string", "messages")
    found = _DATA_URL.fullmatch(url)
    if found is not None:
        return Image(media_type=found["type"].lower(), data=found["data"])
    if url.startswith("https://"):
        return Image(url=url)
    raise invalid(
        f"{at}: an image must be a data: URL (base64) or an https URL; the gateway fetches "
        "nothing itself",
        "messages",
    )


def _tool_calls(value: Any, where: str) -> list[ToolCall]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"{where}.tool_calls must be a list", "messages")
    calls = []
    for k, call in enumerate(value):
        at = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call_id, str) or not call_id:
            raise invalid(f"{at} needs an id and a function", "messages")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"{at}.function.name is required", "messages")
        raw = fn.get("arguments") or "{}"
        try:
            arguments = loads_strict(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise invalid(f"{at}.function.arguments is not valid JSON", "messages") from None
        if not isinstance(arguments, dict):
            raise invalid(f"{at}.function.arguments must be a JSON object", "messages")
        calls.append(ToolCall(call_id, name, arguments))
    return calls
