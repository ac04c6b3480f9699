"""The AI SDK's UI message stream as a translation of the tokenwire protocol.

Vercel's AI SDK (``ai`` on npm; ``useChat`` in ``@ai-sdk/react``) posts a
chat's ``UIMessage``s and reads the answer as "UI message chunks" (the
types of ``ai/src/ui-message-stream/ui-message-chunks.ts``, ``ai`` 7.0):

- ``ui_request`` turns the body ``DefaultChatTransport`` posts (``{id,
  messages, trigger, messageId, ...body}``) into a ``Generate``: the
  ``UIMessage`` parts become chat messages, the call settings (the SDK's
  names: ``maxOutputTokens``, ``topP``, ...) ``Generate``'s params; any other
  field is refused by name;
- ``UiChunks`` turns the generation's frames into the chunks, each one SSE
  event ``data: {json}``, then ``data: [DONE]`` (what
  ``DefaultChatTransport`` parses), or each one object for the SDK's
  WebSocket transport (``UiChunks.chunks``).

Pure code: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .errors import BadMessage
from .messages import (
    Error,
    Finish,
    Generate,
    GenerationFrame,
    Reasoning,
    Token,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)
from .openai_chat import to_generate
from .openai_common import expect, reject_unknown
from .validation import check_generate

SETTINGS: Final[Mapping[str, str]] = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxOutputTokens": "max_tokens",
    "stopSequences": "stop",
    "seed": "seed",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
}
"""The AI SDK's call settings and the ``Generate`` params they are."""
SUPPORTED: Final = frozenset(
    {"id", "messages", "message", "trigger", "messageId", "model", "tools", "resume", *SETTINGS}
)
"""Every body field taken; any other is refused by name."""
TRIGGERS: Final = ("submit-message", "regenerate-message")
FINISH_REASONS: Final[Mapping[str, str]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
}
"""tokenwire's finish reasons as the SDK's (``cancelled`` is an ``abort`` chunk)."""
HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
    "X-Accel-Buffering": "no",
}
"""The headers the SDK's own ``createUIMessageStreamResponse`` sets."""
DONE: Final = b"data: [DONE]\n\n"
IGNORED_PARTS: Final = frozenset(
    {"step-start", "reasoning", "reasoning-file", "source-url", "source-document", "custom"}
)
"""Parts that are not prompt: reasoning (providers expect it dropped), step
marks, sources, a provider's own content. ``data-*`` parts (the app's) too."""

_encode: Final = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class UiRequest:
    """What a ``POST /api/chat`` body asks for."""

    chat_id: str
    generate: Generate
    message_id: str
    """The answer's UI message id: the last message's when it is the
    assistant's (a continuation after a tool result), else a new one."""
    continues: bool
    """The last message is the assistant's: the answer continues it."""
    resume: bool
    """The body asked for the generation to survive its client's drop."""
    history: list[dict[str, Any]]
    """The chat messages the prompt was made of."""


def ui_request(
    body: Any,
    generation_id: str,
    *,
    default_model: str,
    new_message_id: str,
    history: Sequence[dict[str, Any]] | None = None,
) -> UiRequest:
    """The ``Generate`` a ``DefaultChatTransport`` body asks for.

    ``messages`` (the SDK's default) carries the whole chat; ``message``
    alone (the SDK's resume recipe) is the next message of the chat whose
    earlier messages are ``history`` (kept by the server). Raises
    ``BadMessage`` with the field's path.
    """
    expect(body, dict, "$", "a JSON object")
    reject_unknown(body, SUPPORTED)
    chat_id = expect(body.get("id"), str, "$.id", "the chat's id (a string)")
    if not 0 < len(chat_id) <= 256:
        raise BadMessage("the chat's id must be 1 to 256 characters", path="$.id")
    trigger = body.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise BadMessage(f"`trigger` must be one of {', '.join(TRIGGERS)}", path="$.trigger")
    resume = expect(body.get("resume", False), bool, "$.resume", "a boolean")
    if "messages" in body and "message" in body:
        raise BadMessage("give `messages` (the whole chat) or `message`, not both", path="$")
    if "messages" in body:
        ui = expect(body["messages"], list, "$.messages", "an array of UIMessages")
        where = "$.messages"
        earlier: list[dict[str, Any]] = []
    elif "message" in body:
        ui = [body["message"]]
        where = "$.message"
        earlier = list(history or ())
    else:
        raise BadMessage("`messages` (the chat's UIMessages) is required", path="$.messages")
    if not ui:
        raise BadMessage("`messages` must not be empty", path=where)
    converted = [*earlier, *to_chat_messages(ui, where if "messages" in body else None)]
    last = ui[-1]
    continues = isinstance(last, dict) and last.get("role") == "assistant"
    message_id = new_message_id
    if continues and isinstance(last.get("id"), str) and last["id"]:
        message_id = last["id"]
    model = body.get("model", default_model)
    fields: dict[str, Any] = {
        "type": "generate",
        "id": generation_id,
        "model": model,
        "messages": converted,
    }
    if body.get("tools") is not None:
        fields["tools"] = body["tools"]
    params = {SETTINGS[k]: body[k] for k in SETTINGS if body.get(k) is not None}
    if params:
        fields["params"] = params
    generate = to_generate(fields)
    check_generate(generate, from_json=True)
    return UiRequest(chat_id, generate, message_id, continues, resume, converted)


def to_chat_messages(ui: Sequence[Any], where: str | None) -> list[dict[str, Any]]:
    """``UIMessage``s as OpenAI chat messages (``where``: their path, for errors;
    None: one ``message``)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(ui):
        path = f"{where}[{i}]" if where is not None else "$.message"
        expect(message, dict, path, "a UIMessage object")
        role = message.get("role")
        parts = expect(message.get("parts"), list, f"{path}.parts", "an array of parts")
        if role in ("system", "user"):
            content = _user_content(parts, f"{path}.parts", role == "system")
            if content:
                out.append({"role": role, "content": content})
        elif role == "assistant":
            out.extend(_assistant_messages(parts, f"{path}.parts"))
        else:
            raise BadMessage("`role` must be system, user or assistant", path=f"{path}.role")
    return out


def _user_content(parts: list[Any], path: str, text_only: bool) -> str | list[dict[str, Any]]:
    """A user's (or the system's) parts as a message's content."""
    content: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = _part_type(part, f"{path}[{j}]")
        if kind == "text":
            text = expect(part.get("text"), str, f"{path}[{j}].text", "a string")
            content.append({"type": "text", "text": text})
        elif kind == "file" and not text_only:
            media = expect(part.get("mediaType"), str, f"{path}[{j}].mediaType", "a string")
            url = expect(part.get("url"), str, f"{path}[{j}].url", "a URL or data URL")
            if not media.startswith("image/"):
                raise BadMessage(
                    f"a file of type {media[:60]!r} cannot be sent: only images are",
                    path=f"{path}[{j}].mediaType",
                )
            content.append({"type": "image_url", "image_url": {"url": url}})
        elif kind in IGNORED_PARTS or kind.startswith("data-"):
            continue
        else:
            raise BadMessage(
                f"a part of type {kind[:60]!r} cannot be sent here", path=f"{path}[{j}]"
            )
    if all(c["type"] == "text" for c in content):
        return "".join(c["text"] for c in content)
    return content


def _assistant_messages(parts: list[Any], path: str) -> list[dict[str, Any]]:
    """An assistant ``UIMessage`` as chat messages: one assistant message a
    step (its text and tool calls), each followed by the ``tool`` messages
    that answer its calls. A call with no output yet is left out (a
    provider refuses a call without its answer)."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []

    def flush() -> None:
        if text or calls:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                message["tool_calls"] = list(calls)
            out.append(message)
            out.extend(answers)
        text.clear()
        calls.clear()
        answers.clear()

    for j, part in enumerate(parts):
        where = f"{path}[{j}]"
        kind = _part_type(part, where)
        if kind == "step-start":
            flush()
        elif kind == "text":
            text.append(expect(part.get("text"), str, f"{where}.text", "a string"))
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            call = _tool_call(part, kind, where)
            if call is not None:
                calls.append(call[0])
                answers.append(call[1])
        elif kind in IGNORED_PARTS or kind.startswith("data-") or kind == "file":
            continue
        else:
            raise BadMessage(f"a part of type {kind[:60]!r} cannot be sent here", path=where)
    flush()
    return out


def _tool_call(
    part: dict[str, Any], kind: str, where: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A tool part with its output (or error) as a call and its answer."""
    state = part.get("state")
    if state not in ("output-available", "output-error"):
        return None
    call_id = expect(part.get("toolCallId"), str, f"{where}.toolCallId", "a string")
    if kind == "dynamic-tool":
        name = expect(part.get("toolName"), str, f"{where}.toolName", "a string")
    else:
        name = kind[len("tool-") :]
    arguments = json.dumps(part.get("input"), ensure_ascii=False)
    if state == "output-available":
        output = part.get("output")
        answer = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    else:
        answer = str(part.get("errorText") or "the tool failed")
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return call, {"role": "tool", "tool_call_id": call_id, "content": answer}


def _part_type(part: Any, where: str) -> str:
    expect(part, dict, where, "a part object")
    kind = part.get("type")
    return str(expect(kind, str, f"{where}.type", "a string"))


def usage_metadata(usage: Usage) -> dict[str, Any]:
    """``usage`` in the SDK's ``LanguageModelUsage`` shape (``ai`` 7.0)."""
    cached = None
    if usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens
    reasoning = None
    if usage.completion_tokens_details is not None:
        reasoning = usage.completion_tokens_details.reasoning_tokens
    details_in: dict[str, Any] = {"cacheReadTokens": cached}
    if cached is not None:
        details_in["noCacheTokens"] = max(usage.prompt_tokens - cached, 0)
    details_out: dict[str, Any] = {"reasoningTokens": reasoning}
    if reasoning is not None:
        details_out["textTokens"] = max(usage.completion_tokens - reasoning, 0)
    return {
        "inputTokens": usage.prompt_tokens,
        "inputTokenDetails": {k: v for k, v in details_in.items() if v is not None},
        "outputTokens": usage.completion_tokens,
        "outputTokenDetails": {k: v for k, v in details_out.items() if v is not None},
        "totalTokens": usage.total_tokens,
    }


class UiChunks:
    """One generation's frames as UI message chunks.

    ``chunks`` gives them as objects (the WebSocket transport numbers and
    wraps each); ``translate`` as SSE events (``data: {json}\\n\\n``, the
    last followed by ``data: [DONE]``). Text, reasoning and each tool call's
    input are parts with ids; a part is ended (``text-end``, ...) when
    another kind begins and at the finish.
    """

    __slots__ = ("_calls", "_count", "_message_id", "_open", "_started")

    def __init__(self, message_id: str) -> None:
        self._message_id = message_id
        self._open: tuple[str, str] | None = None
        """The part being streamed: (kind, its id)."""
        self._count = 0
        self._calls: dict[int, tuple[str, str]] = {}
        """Tool call index → (its id, its name)."""
        self._started = False

    @property
    def message_id(self) -> str:
        return self._message_id

    def opening(self) -> list[bytes]:
        return [_sse(c) for c in self.opening_chunks()]

    def opening_chunks(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [{"type": "start", "messageId": self._message_id}, {"type": "start-step"}]

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        out = [_sse(c) for c in self.chunks(frame)]
        if isinstance(frame, Finish | Error):
            out.append(DONE)
        return out

    def chunks(self, frame: GenerationFrame) -> list[dict[str, Any]]:
        """The chunks ``frame`` makes (the opening ones first, if not yet sent)."""
        out = self.opening_chunks()
        if type(frame) is Token:
            self._part("text", out)
            out.append({"type": "text-delta", "id": self._id(), "delta": frame.text})
        elif isinstance(frame, Reasoning):
            self._part("reasoning", out)
            out.append({"type": "reasoning-delta", "id": self._id(), "delta": frame.text})
        elif isinstance(frame, ToolCallChunk):
            self._end(out)
            if frame.index not in self._calls:
                call_id = frame.call_id or f"call_{frame.index}"
                self._calls[frame.index] = (call_id, frame.name or "tool")
                out.append(
                    {
                        "type": "tool-input-start",
                        "toolCallId": call_id,
                        "toolName": frame.name or "tool",
                    }
                )
            if frame.arguments:
                call_id = self._calls[frame.index][0]
                out.append(
                    {
                        "type": "tool-input-delta",
                        "toolCallId": call_id,
                        "inputTextDelta": frame.arguments,
                    }
                )
        elif isinstance(frame, ToolCallComplete):
            call_id, name = self._calls.get(
                frame.index, (frame.call_id or f"call_{frame.index}", frame.name or "tool")
            )
            chunk: dict[str, Any] = {"toolCallId": call_id, "toolName": frame.name or name}
            try:
                chunk["input"] = json.loads(frame.arguments) if frame.arguments else {}
            except ValueError:
                chunk["input"] = frame.arguments
                chunk["errorText"] = "the model's tool input is not valid JSON"
                out.append({"type": "tool-input-error", **chunk})
            else:
                out.append({"type": "tool-input-available", **chunk})
        elif isinstance(frame, Finish):
            self._end(out)
            out.append({"type": "finish-step"})
            if frame.reason == "cancelled":
                out.append({"type": "abort", "reason": "cancelled"})
            else:
                finish: dict[str, Any] = {
                    "type": "finish",
                    "finishReason": FINISH_REASONS.get(frame.reason, "other"),
                }
                if frame.usage is not None:
                    finish["messageMetadata"] = {"usage": usage_metadata(frame.usage)}
                out.append(finish)
        elif isinstance(frame, Error):
            self._end(out)
            out.append({"type": "error", "errorText": frame.message})
        return out

    def _part(self, kind: str, out: list[dict[str, Any]]) -> None:
        if self._open is not None and self._open[0] == kind:
            return
        self._end(out)
        self._count += 1
        self._open = (kind, f"{kind}-{self._count}")
        out.append({"type": f"{kind}-start", "id": self._open[1]})

    def _id(self) -> str:
        assert self._open is not None
        return self._open[1]

    def _end(self, out: list[dict[str, Any]]) -> None:
        if self._open is not None:
            kind, part_id = self._open
            out.append({"type": f"{kind}-end", "id": part_id})
            self._open = None


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"
