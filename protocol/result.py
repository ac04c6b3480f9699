"""Frames in, the finished result out.

``ResultBuilder`` is to tokenwire's frames what LiteLLM's
``stream_chunk_builder`` is to provider chunks: it rebuilds the whole answer
(content, reasoning, tool calls, usage, reason) from one generation's frames.
It also checks the contract's invariants 1–4 as the frames arrive and raises
``ProtocolViolation`` when a peer breaks one, so clients and load generators
get the check for free.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from msgspec import Struct

from .errors import ProtocolViolation
from .messages import (
    Error,
    Finish,
    FinishReason,
    GenerationFrame,
    Reasoning,
    Token,
    ToolCall,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
    assistant_message,
)


class Result(Struct, frozen=True, kw_only=True):
    """A finished generation. ``error`` is set, and ``reason`` None, when it failed."""

    id: str
    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    usage: Usage | None
    reason: FinishReason | None
    error: Error | None = None
    model: str = ""

    def to_openai(self, *, created: int | None = None) -> dict[str, Any]:
        """The result as an OpenAI ``chat.completion`` object.

        The same shape ``litellm.stream_chunk_builder`` builds from a stream's
        chunks: ``content`` is None when empty, ``tool_calls`` and
        ``reasoning_content`` appear when there are any. OpenAI has no
        ``cancelled`` finish reason: a cancelled result says ``stop``.
        """
        message = assistant_message(
            self.content, self.tool_calls, self.reasoning, null_when_empty=True
        )
        reason = "stop" if self.reason in (None, "cancelled") else self.reason
        completion: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()) if created is None else created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        }
        if self.usage is not None:
            completion["usage"] = {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            }
        return completion


class _Call:
    __slots__ = ("arguments", "call_id", "complete", "name")

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []
        self.complete: ToolCallComplete | None = None


class ResultBuilder:
    """Accumulates one generation's frames; ``result()`` once a terminal frame came."""

    __slots__ = (
        "_calls",
        "_reasoning",
        "_terminal",
        "_text",
        "generation_id",
        "model",
        "next_seq",
    )

    def __init__(self, generation_id: str, *, model: str = "") -> None:
        self.generation_id = generation_id
        self.model = model
        self.next_seq = 0
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._terminal: Finish | Error | None = None

    @property
    def done(self) -> bool:
        return self._terminal is not None

    @property
    def text(self) -> str:
        """The answer's text received so far."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def add(self, frame: GenerationFrame) -> None:
        """Take the generation's next frame, checking invariants 1–4."""
        if frame.id != self.generation_id:
            self._violation(f"frame for {frame.id!r} given to the builder of another generation")
        if self._terminal is not None:
            self._violation(f"{type(frame).__name__} after the terminal frame")
        if frame.seq is not None and frame.seq != self.next_seq:
            self._violation(f"seq {frame.seq} where {self.next_seq} was due")
        self.next_seq += 1
        match frame:
            case Token(text=text):
                self._text.append(text)
            case Reasoning(text=text):
                self._reasoning.append(text)
            case ToolCallChunk():
                call = self._calls.setdefault(frame.index, _Call())
                if call.complete is not None:
                    self._violation(f"tool_call_chunk for call {frame.index} after its completion")
                call.call_id = call.call_id or frame.call_id
                call.name = call.name or frame.name
                call.arguments.append(frame.arguments)
            case ToolCallComplete():
                call = self._calls.setdefault(frame.index, _Call())
                if call.complete is not None:
                    self._violation(f"tool call {frame.index} completed twice")
                if "".join(call.arguments) != frame.arguments:
                    self._violation(f"tool call {frame.index}: arguments differ from its chunks")
                call.complete = frame
            case Finish():
                if frame.content != self.text:
                    self._violation("finish.content differs from the token frames")
                for listed in frame.tool_calls:
                    seen = self._calls.get(listed.index)
                    if seen is None or seen.complete is None:
                        self._violation(f"finish lists tool call {listed.index} never completed")
                    if seen.complete.arguments != listed.arguments:
                        self._violation(
                            f"finish.tool_calls[{listed.index}] differs from its chunks"
                        )
                if len(frame.tool_calls) != len(self._calls):
                    self._violation("finish.tool_calls does not list every streamed tool call")
                self._terminal = frame
            case Error():
                self._terminal = frame
            case _:
                self._violation(f"unexpected frame {type(frame).__name__}")

    def result(self) -> Result:
        """The finished result; raises ``ProtocolViolation`` if no terminal frame came."""
        terminal = self._terminal
        if terminal is None:
            self._violation("result() before the terminal frame")
        if isinstance(terminal, Finish):
            return Result(
                id=self.generation_id,
                content=terminal.content,
                reasoning=self.reasoning,
                tool_calls=terminal.tool_calls,
                usage=terminal.usage,
                reason=terminal.reason,
                model=self.model,
            )
        return Result(
            id=self.generation_id,
            content=self.text,
            reasoning=self.reasoning,
            tool_calls=[
                ToolCall(index=i, call_id=c.call_id, name=c.name, arguments="".join(c.arguments))
                for i, c in sorted(self._calls.items())
            ],
            usage=None,
            reason=None,
            error=terminal,
            model=self.model,
        )

    def _violation(self, message: str) -> NoReturn:
        raise ProtocolViolation(message, generation_id=self.generation_id)
