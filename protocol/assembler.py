"""Upstream deltas in, numbered frames out.

The server normalizes every provider's stream chunk into a ``Delta`` and feeds
it to one ``FrameAssembler`` per generation. The assembler owns what the
contract's invariants 1–4 are about: ``seq`` numbering, the accumulated text,
tool-call assembly by index, ``tool_call_complete`` once per call before
``finish``, the repeated-chunk check, and the merging of consecutive text
pieces the contract allows under a slow reader (invariant 8: the caller says
when, with ``hold``). It never sees a socket or a clock.
"""

from __future__ import annotations

from typing import Final

from msgspec import Struct

from .errors import ErrorCode, ProtocolError, RepeatedOutput
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
)
from .sanitize import TextJoiner, replace_surrogates


def error_frame(
    generation_id: str | None,
    code: ErrorCode,
    message: str,
    *,
    seq: int = 0,
    retry_after_ms: int | None = None,
) -> Error:
    """An ``error`` frame: a generation's terminal one (with its ``id`` and
    ``seq``; 0 for a ``generate`` refused before it started), or one about a
    message that could not be taken (``generation_id`` None, no ``seq``).
    Every error frame tokenwire sends is made here."""
    return Error(
        id=generation_id,
        seq=seq if generation_id is not None else None,
        code=code.value,
        message=message,
        retryable=code.retryable,
        retry_after_ms=retry_after_ms,
    )


class ToolCallDelta(Struct, frozen=True, kw_only=True):
    """A fragment of tool call ``index`` as a provider streams it."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


class Delta(Struct, frozen=True, kw_only=True):
    """One upstream chunk, normalized: what a provider's stream chunk carried."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None

    @property
    def has_output(self) -> bool:
        """Whether the chunk carries text, reasoning or a tool-call fragment.

        Only such chunks count as tokens for ``first_token_timeout`` and
        ``idle_timeout``.
        """
        return bool(self.text or self.reasoning or self.tool_calls)


_FINISH_REASONS: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def normalize_finish_reason(upstream: str | None, *, has_tool_calls: bool) -> FinishReason:
    """The contract's reason for a provider's ``finish_reason``.

    LiteLLM already maps most providers' reasons onto OpenAI's; anything else
    (or none at all) is ``tool_calls`` when the answer called tools, ``stop``
    otherwise. A ``stop`` with tool calls (OpenAI's answer when
    ``tool_choice`` names a function) is ``tool_calls`` too: the answer asks
    for its tools to run either way, and LiteLLM's stream (since 1.109) says
    so itself, so both engines agree.
    """
    if upstream is not None and (reason := _FINISH_REASONS.get(upstream)) is not None:
        return "tool_calls" if reason == "stop" and has_tool_calls else reason
    return "tool_calls" if has_tool_calls else "stop"


class _PendingCall:
    __slots__ = ("arguments", "call_id", "index", "join", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []
        self.join = TextJoiner()

    def as_tool_call(self) -> ToolCall:
        return ToolCall(
            index=self.index,
            call_id=self.call_id,
            name=self.name,
            arguments="".join(self.arguments),
        )


class FrameAssembler:
    """Turns one generation's deltas into its frames.

    ``feed`` returns the frames a delta makes (possibly none) and raises
    ``RepeatedOutput`` when more than ``repeated_chunk_limit`` consecutive
    chunks carry the same non-empty text; the offending chunk is not emitted.
    ``finish`` and ``fail`` return the terminal frames; after them the
    assembler refuses more input.

    ``feed(delta, hold=True)`` keeps a delta that carries only text (or only
    reasoning) instead of making its frame, merging it with the text held
    before; ``flush`` (or the next frame of another kind, or the terminal
    frames) emits what is held as one frame. The repeated-chunk check still
    sees every chunk as it came.
    """

    __slots__ = (
        "_calls",
        "_done",
        "_held",
        "_held_reasoning",
        "_held_size",
        "_join_reasoning",
        "_join_text",
        "_reasoning",
        "_repeat_count",
        "_repeat_limit",
        "_repeat_text",
        "_text",
        "finish_reason",
        "generation_id",
        "seq",
        "usage",
    )

    def __init__(self, generation_id: str, *, repeated_chunk_limit: int = 100) -> None:
        self.generation_id = generation_id
        self.seq = 0
        """The ``seq`` the next frame will carry (so also: frames made so far)."""
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _PendingCall] = {}
        self._repeat_limit = repeated_chunk_limit
        self._repeat_text = ""
        self._repeat_count = 0
        self._done = False
        self._held: list[str] = []
        self._held_reasoning = False
        self._held_size = 0
        # Text split inside a surrogate pair is joined across chunks.
        self._join_text = TextJoiner()
        self._join_reasoning = TextJoiner()

    @property
    def content(self) -> str:
        """The answer's text so far (what the ``token`` frames carried)."""
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self._calls[i].as_tool_call() for i in sorted(self._calls)]

    @property
    def done(self) -> bool:
        return self._done

    @property
    def holding(self) -> bool:
        """Whether text is held back for a merged frame (see ``flush``)."""
        return bool(self._held)

    @property
    def held_size(self) -> int:
        """Characters held back."""
        return self._held_size

    def feed(self, delta: Delta, *, hold: bool = False) -> list[GenerationFrame]:
        if self._done:
            raise ProtocolError(f"generation {self.generation_id} already ended")
        text = delta.text
        self._check_repeats(text)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage
        if not delta.has_output:
            return []
        text = self._join_text(text) if text else text
        reasoning = self._join_reasoning(delta.reasoning) if delta.reasoning else ""
        if not (text or reasoning or delta.tool_calls):
            return []
        if hold and not delta.tool_calls and not (text and reasoning):
            is_reasoning = not text
            held = self.flush() if self._held and self._held_reasoning != is_reasoning else []
            piece = reasoning if is_reasoning else text
            self._held.append(piece)
            self._held_size += len(piece)
            self._held_reasoning = is_reasoning
            return held
        frames = self.flush()
        gid = self.generation_id
        if reasoning:
            self._reasoning.append(reasoning)
            frames.append(Reasoning(id=gid, seq=self._next_seq(), text=reasoning))
        if text:
            self._text.append(text)
            frames.append(Token(id=gid, seq=self._next_seq(), text=text))
        for fragment in delta.tool_calls:
            call = self._calls.get(fragment.index)
            if call is None:
                call = self._calls[fragment.index] = _PendingCall(fragment.index)
            call_id = replace_surrogates(fragment.call_id) if fragment.call_id else None
            name = replace_surrogates(fragment.name) if fragment.name else None
            if call.call_id is None and call_id:
                call.call_id = call_id
            if call.name is None and name:
                call.name = name
            arguments = call.join(fragment.arguments) if fragment.arguments else ""
            call.arguments.append(arguments)
            frames.append(
                ToolCallChunk(
                    id=gid,
                    seq=self._next_seq(),
                    index=fragment.index,
                    call_id=call_id,
                    name=name,
                    arguments=arguments,
                )
            )
        return frames

    def flush(self) -> list[GenerationFrame]:
        """The held text as one frame (none when nothing is held)."""
        if not self._held:
            return []
        text = "".join(self._held)
        self._held = []
        self._held_size = 0
        if self._held_reasoning:
            self._reasoning.append(text)
            return [Reasoning(id=self.generation_id, seq=self._next_seq(), text=text)]
        self._text.append(text)
        return [Token(id=self.generation_id, seq=self._next_seq(), text=text)]

    def finish(
        self, reason: FinishReason | None = None, usage: Usage | None = None
    ) -> list[GenerationFrame]:
        """``tool_call_complete`` for every call, then ``finish``.

        ``reason`` defaults to the upstream's (normalized); pass ``cancelled``
        for a cancel. ``usage`` defaults to what the upstream reported. Held
        text goes out first.
        """
        frames = self.flush()
        self._end()
        calls = self.tool_calls
        if reason is None:
            reason = normalize_finish_reason(self.finish_reason, has_tool_calls=bool(calls))
        gid = self.generation_id
        frames += [
            ToolCallComplete(
                id=gid,
                seq=self._next_seq(),
                index=call.index,
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments,
            )
            for call in calls
        ]
        frames.append(
            Finish(
                id=gid,
                seq=self._next_seq(),
                reason=reason,
                content=self.content,
                tool_calls=calls,
                usage=usage if usage is not None else self.usage,
            )
        )
        return frames

    def fail(
        self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None
    ) -> list[GenerationFrame]:
        """Held text, then the generation's terminal ``error`` frame."""
        frames = self.flush()
        self._end()
        frames.append(
            error_frame(self.generation_id, code, message, seq=self._next_seq(),
                        retry_after_ms=retry_after_ms)
        )  # fmt: skip
        return frames

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = seq + 1
        return seq

    def _end(self) -> None:
        if self._done:
            raise ProtocolError(f"generation {self.generation_id} already ended")
        self._done = True

    def _check_repeats(self, text: str) -> None:
        if text and text == self._repeat_text:
            self._repeat_count += 1
            if self._repeat_count > self._repeat_limit:
                raise RepeatedOutput(text, self._repeat_limit)
        else:
            self._repeat_text = text
            self._repeat_count = 1 if text else 0
