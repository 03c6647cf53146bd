"""OpenAI Chat Completions and embeddings -> AWS Bedrock runtime (binding ``bedrock``).

Chat goes through Converse, or ConverseStream when the client streams
(``POST {base_url}/model/{quote(model, safe="")}/converse[-stream]``; the model id is
percent-encoded whole, ``:`` and ``/`` included, and sent byte-exact so that the SigV4
signature ``rolegate_gateway.auth`` adds covers the path sent: reference
translation.md §0.4, §6.1, §10). Embeddings go to Titan through InvokeModel
(:mod:`~rolegate_gateway.translators.bedrock_embeddings`). The translator holds no
credentials and signs nothing.

Request (§6.2): the client's chat, read by :func:`~rolegate_gateway.translators.chat.read_chat`,
becomes :func:`converse_request`'s body. Where Bedrock cannot do what the client asks,
the answer is a 400 naming the parameter, never a silent change of meaning:

- images must be ``data:`` URLs of png/jpeg/gif/webp (Bedrock cannot fetch a URL);
- the conversation must start with a user turn;
- tool blocks in the history need the request's ``tools`` (Converse refuses
  toolUse/toolResult blocks without ``toolConfig``, §0.6);
- ``tool_choice`` ``required`` or a function needs ``tools``.

``tool_choice: "none"`` has no Converse equivalent (§0.6, §13 row 17): without tool blocks
in the history no ``toolConfig`` is sent, so the model cannot call a tool ("none" exactly);
with them the tools are kept (Converse requires them) and ``toolChoice`` is left out, so
the model *may* call a tool (best effort). A tool choice named ``"none"`` is never sent.
``parallel_tool_calls`` is dropped: only Claude takes it, through
``additionalModelRequestFields.tool_choice``, which Converse refuses next to
``toolConfig.toolChoice``. ``user`` is dropped (``requestMetadata`` is for Bedrock's logs).

Answer (§7, §8.4): a whole ``chat.completion`` or ``chat.completion.chunk`` events written
by :mod:`~rolegate_gateway.translators.chunks`; ``id`` is Bedrock's ``x-amzn-RequestId``
(also passed as ``x-upstream-request-id``), ``model`` the role's upstream model (Bedrock
names none), reasoning content is dropped. The event stream is read by
:class:`~rolegate_gateway.translators.bedrock_stream.ConverseStream`. Errors (§9) are
mapped by :func:`~rolegate_gateway.translators.bedrock_stream.known_error`.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import quote

from multidict import CIMultiDictProxy
from yarl import URL

from rolegate_gateway import errors
from rolegate_gateway.config import Upstream
from rolegate_gateway.intake import Payload
from rolegate_gateway.translators import chat as oai
from rolegate_gateway.translators import upstream_errors
from rolegate_gateway.translators.base import (
    REQUEST_ID_HEADER,
    Endpoint,
    ResponseHead,
    UpstreamRequest,
    Usage,
    encode,
    request_id,
)
from rolegate_gateway.translators.bedrock_embeddings import TitanEmbeddings
from rolegate_gateway.translators.bedrock_stream import (
    ConverseStream,
    converse_usage,
    finish,
    known_error,
)
from rolegate_gateway.translators.chunks import completion
from rolegate_gateway.translators.wire import bedrock as wire

__all__ = ["BedrockExchange", "BedrockTranslator", "converse_request"]

_BINDING = "bedrock"
_HEADERS = {"Content-Type": "application/json"}


class BedrockTranslator:
    """The translator factory of one ``bedrock`` role: built once per role wrapper with its
    :class:`~rolegate_gateway.config.Upstream` (``model``: a base id, a cross-region
    profile or an ARN; ``base_url``: ``https://bedrock-runtime.{region}.amazonaws.com``, a
    VPC endpoint, or a fake's); calling it returns one request's :class:`BedrockExchange`."""

    __slots__ = ("base_url", "model", "options", "role", "urls")

    def __init__(self, upstream: Upstream, *, role: str) -> None:
        self.role = role
        self.model = upstream.model
        self.base_url = upstream.base_url
        self.options = dict(upstream.options)
        model_path = f"{upstream.base_url}/model/{quote(upstream.model, safe='')}"
        #: client streams -> the Converse URL (percent-encoded, sent as it is)
        self.urls = {
            False: URL(f"{model_path}/converse", encoded=True),
            True: URL(f"{model_path}/converse-stream", encoded=True),
        }

    def __call__(self) -> BedrockExchange:
        """A fresh exchange for one request."""
        return BedrockExchange(self)


def converse_request(chat: oai.Chat) -> wire.ConverseRequest:
    """The Converse(Stream) body of a read chat request (reference §6.2): ``system``,
    ``messages`` (text, image, toolUse, toolResult blocks; an assistant's text before its
    tool calls), ``inferenceConfig`` with only the values set, ``toolConfig``.

    Raises:
        errors.InvalidRequest: what Converse cannot take (see the module docstring).
    """
    if chat.turns[0].role != "user":
        raise oai.invalid(
            "binding bedrock: the conversation must start with a user message "
            "(Bedrock Converse refuses others)",
            "messages",
        )
    body: wire.ConverseRequest = {"messages": [_message(turn) for turn in chat.turns]}
    if chat.system:
        body["system"] = [{"text": text} for text in chat.system]
    config: wire.InferenceConfig = {}
    if chat.max_tokens is not None:
        config["maxTokens"] = chat.max_tokens
    if chat.temperature is not None:
        config["temperature"] = chat.temperature
    if chat.top_p is not None:
        config["topP"] = chat.top_p
    if chat.stop:
        config["stopSequences"] = chat.stop
    if config:
        body["inferenceConfig"] = config
    tool_config = _tool_config(chat)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    return body


def _tool_config(chat: oai.Chat) -> wire.ToolConfig | None:
    choice = chat.tool_choice
    if not chat.tools:
        if chat.has_tool_blocks:
            raise oai.invalid(
                "binding bedrock: the conversation holds tool calls or tool results, and "
                "Bedrock Converse requires toolConfig with toolUse/toolResult history: send "
                "the tools of the conversation in 'tools'",
                "tools",
            )
        if choice is not None and choice.kind in ("required", "function"):
            raise oai.invalid(f"tool_choice {choice.kind!r} needs 'tools'", "tool_choice")
        return None
    if choice is not None and choice.kind == "none" and not chat.has_tool_blocks:
        return None  # no tools offered: the model cannot call one ("none" exactly)
    tools: list[wire.Tool] = []
    for tool in chat.tools:
        spec: wire.ToolSpec = {"name": tool.name}
        if tool.description is not None:
            spec["description"] = tool.description
        spec["inputSchema"] = {"json": tool.parameters}
        tools.append({"toolSpec": spec})
    config: wire.ToolConfig = {"tools": tools}
    match choice:
        case oai.ToolChoice(kind="auto"):
            config["toolChoice"] = {"auto": {}}
        case oai.ToolChoice(kind="required"):
            config["toolChoice"] = {"any": {}}
        case oai.ToolChoice(kind="function", name=str(name)):
            config["toolChoice"] = {"tool": {"name": name}}
        case _:  # None, or "none" with tool blocks in the history: best effort
            pass
    return config


def _message(turn: oai.Turn) -> wire.Message:
    blocks: list[wire.ContentBlock] = []
    calls: list[wire.ContentBlock] = []
    for part in turn.parts:
        match part:
            case oai.Text(text=text):
                blocks.append({"text": text})
            case oai.Image():
                blocks.append({"image": _image(part)})
            case oai.ToolCall(id=call_id, name=name, arguments=arguments):
                calls.append({"toolUse": {"toolUseId": call_id, "name": name, "input": arguments}})
            case oai.ToolResult(tool_call_id=call_id, content=content):
                result: list[wire.ContentBlock] = [
                    {"text": p.text} if isinstance(p, oai.Text) else {"image": _image(p)}
                    for p in content
                ]
                blocks.append({"toolResult": {"toolUseId": call_id, "content": result}})
    return {"role": turn.role, "content": blocks + calls}


def _image(image: oai.Image) -> wire.Image:
    if image.data is None:
        raise oai.invalid(
            "binding bedrock takes images as data: URLs only; Bedrock cannot fetch URLs",
            "messages",
        )
    fmt = wire.IMAGE_FORMATS.get(image.media_type or "")
    if fmt is None:
        raise oai.invalid(
            f"binding bedrock takes images of type {', '.join(wire.IMAGE_FORMATS)}, "
            f"not {image.media_type}",
            "messages",
        )
    return {"format": fmt, "source": {"bytes": image.data}}


class BedrockExchange:
    """One request through a :class:`BedrockTranslator` (the ``Translator`` protocol of
    ``translators.base``): chat, streamed or not, or Titan embeddings."""

    __slots__ = (
        "_body",
        "_embed",
        "_factory",
        "_id",
        "_stream",
        "failure",
        "first_content",
        "usage",
    )

    def __init__(self, factory: BedrockTranslator) -> None:
        self._factory = factory
        self._stream: ConverseStream | None = None
        self._embed: TitanEmbeddings | None = None
        self._body = b""
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self.first_content = False
        self.usage: Usage | None = None
        self.failure: errors.GatewayError | None = None

    @property
    def complete(self) -> bool:
        """The client's stream is whole: ``data: [DONE]`` was written."""
        return self._stream is not None and self._stream.writer.done

    def request(self, endpoint: Endpoint, payload: Payload) -> UpstreamRequest:
        """Chat: the Converse (or ConverseStream, when the client streams) call with
        :func:`converse_request`'s body; embeddings: the first Titan InvokeModel call.
        Headers: ``Content-Type: application/json`` only (auth adds the signature).

        Raises:
            errors.InvalidRequest: what Bedrock cannot serve (400; the message says why),
                the legacy completions endpoint included.
        """
        f = self._factory
        match endpoint:
            case Endpoint.CHAT_COMPLETIONS:
                chat = oai.read_chat(payload, f.options, binding=_BINDING)
                body = encode(converse_request(chat))
                if chat.stream:
                    self._stream = ConverseStream(
                        role=f.role, model=f.model, include_usage=chat.include_usage
                    )
                return UpstreamRequest(f.urls[chat.stream], _HEADERS, body)
            case Endpoint.EMBEDDINGS:
                self._embed = TitanEmbeddings(role=f.role, model=f.model, base_url=f.base_url)
                return self._embed.first(payload, f.options)
            case _:
                raise errors.InvalidRequest(
                    f"binding bedrock serves /v1/chat/completions and /v1/embeddings, not "
                    f"/v1/{endpoint.value}"
                )

    def response_headers(self, status: int, headers: CIMultiDictProxy[str]) -> ResponseHead:
        """200 with ``text/event-stream`` (stream) when the client streams, else
        ``application/json``; ``x-amzn-RequestId`` passed as ``x-upstream-request-id``
        and taken as the answer's ``id``."""
        passed = request_id(headers, "x-amzn-RequestId")
        self._id = passed.get(REQUEST_ID_HEADER, self._id)
        if self._stream is not None:
            self._stream.id = self._id
            return ResponseHead(200, "text/event-stream", True, passed)
        return ResponseHead(200, "application/json", False, passed)

    def response_body(self, chunk: bytes, *, end: bool) -> bytes:
        """Stream: the SSE chunks of the event-stream bytes so far (:class:`ConverseStream`).
        Otherwise ``b""`` until ``end``, then the ``chat.completion`` (§7) or the
        embeddings call's answer; ``failure`` is set for a 200 that holds no answer."""
        if self._stream is not None:
            out = self._stream.feed(chunk, end=end)
            self.first_content = self._stream.writer.first_content
            self.usage, self.failure = self._stream.writer.usage, self._stream.failure
            return out
        self._body += chunk
        if not end:
            return b""
        body, self._body = self._body, b""
        if self._embed is not None:
            out = self._embed.answer(body)
            self.usage, self.failure = self._embed.usage, self._embed.failure
            return out
        return self._completion(body)

    def _completion(self, body: bytes) -> bytes:
        """A whole Converse answer (§7) as a ``chat.completion``."""
        parsed = upstream_errors.json_object(body) or {}
        output = parsed.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            said = parsed.get("Output")  # a 200 UnknownOperationException (§0.4)
            kind = said.get("__type") if isinstance(said, dict) else None
            self.failure = errors.UpstreamUnavailable(
                f"the upstream of role {self._factory.role!r} answered 200 without "
                f"output.message" + (f" ({str(kind)[:200]})" if kind else "")
            )
            return b""
        texts: list[str] = []
        calls: list[tuple[str, str, str]] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            text, tool = block.get("text"), block.get("toolUse")
            if isinstance(text, str):
                texts.append(text)
            elif isinstance(tool, dict):
                arguments = json.dumps(tool.get("input", {}), ensure_ascii=False)
                calls.append((str(tool.get("toolUseId")), str(tool.get("name")), arguments))
        self.usage = converse_usage(parsed.get("usage"))
        return completion(
            id_=self._id,
            model=self._factory.model,
            content="".join(texts) or None,
            tool_calls=calls,
            finish=finish(parsed.get("stopReason"), self._factory.role),
            usage=self.usage,
        )

    def error(
        self, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> errors.GatewayError:
        """Bedrock's error answer (§9): the code from ``x-amzn-ErrorType`` (before its
        ``:``; else the body's ``__type`` after its ``#``), the text from the body's
        ``message`` or ``Message``; credential and signature codes (and a 401) are
        ``credentials_refused``; an unknown code or a non-JSON body is wrapped."""
        role = self._factory.role
        parsed = upstream_errors.json_object(body) or {}
        code = headers.get("x-amzn-ErrorType") or str(parsed.get("__type") or "")
        code = code.split(":", 1)[0].rsplit("#", 1)[-1].strip()
        said = parsed.get("message", parsed.get("Message"))
        text = said.strip() if isinstance(said, str) else ""
        if status == 401 and code not in wire.ERRORS:
            return upstream_errors.credentials_refused(role, status, headers, text or code)
        mapped = known_error(role, status, headers, code, text)
        if mapped is not None:
            return mapped
        return upstream_errors.wrapped(role, status, headers, body.decode(errors="replace"))

    def more(self) -> UpstreamRequest | None:
        """The next Titan call of an embeddings request with several inputs, else None."""
        return self._embed.next() if self._embed is not None else None
