"""Every message of the v1 wire protocol, as frozen, tagged msgspec Structs.

Client messages (``Generate``, ``Cancel``, ``Reset``) are strict: unknown
fields are refused. Server frames are lenient on the way in, so that a client
built on this module ignores fields a later server adds.

New fields get defaults, so the schema can grow without breaking old peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta, Struct

PROTOCOL = "tokenwire.v1"

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
GenerationId: TypeAlias = Annotated[str, Meta(pattern=ID_PATTERN)]
"""A client-chosen generation id: 1–64 characters of ``A-Za-z0-9._:-``."""

FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]

# --------------------------------------------------------------------------
# client → server


class _ClientMessage(
    Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    pass


class Params(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Sampling parameters passed to the provider; only these keys are taken."""

    temperature: Annotated[float, Meta(ge=0)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    n: Literal[1] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The parameters that were given, as keyword arguments for the provider."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


class Generate(_ClientMessage, tag="generate", frozen=True, kw_only=True):
    """Start a generation named ``id`` on ``model``."""

    id: GenerationId
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    params: Params | None = None
    conversation: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class Cancel(_ClientMessage, tag="cancel", frozen=True, kw_only=True):
    """Stop generation ``id``; ignored when no such generation is active."""

    id: str


class Reset(_ClientMessage, tag="reset", frozen=True, kw_only=True):
    """Cancel every active generation and forget every conversation."""


class Resume(_ClientMessage, tag="resume", frozen=True, kw_only=True):
    """Take up a session after a dropped connection: valid as the first message.

    ``token`` is the ``resume_token`` of the session's ``ready``;
    ``generations`` maps each generation the client wants continued to the
    last ``seq`` it received (-1: none of its frames).
    """

    token: Annotated[str, Meta(min_length=1, max_length=128)]
    generations: dict[GenerationId, Annotated[int, Meta(ge=-1)]] = {}


ClientMessage: TypeAlias = Generate | Cancel | Reset | Resume

# --------------------------------------------------------------------------
# server → client


class _Frame(Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Limits(Struct, frozen=True, kw_only=True):
    max_generations: int
    max_message_bytes: int


class Ready(_Frame, tag="ready", frozen=True, kw_only=True):
    """First frame of every session."""

    session: str
    protocol: str = PROTOCOL
    models: list[str]
    limits: Limits
    resume_token: str | None = None
    """Send it in a ``resume`` to take up this session after a drop; None:
    resume is off (or its store is down)."""
    resume_ttl: int | None = None
    """Seconds after a drop during which the session can be resumed."""


class Token(_Frame, tag="token", frozen=True, kw_only=True):
    id: str
    seq: int
    text: str


class Reasoning(_Frame, tag="reasoning", frozen=True, kw_only=True):
    id: str
    seq: int
    text: str


class ToolCallChunk(_Frame, tag="tool_call_chunk", frozen=True, kw_only=True):
    """A fragment of tool call ``index``: ``arguments`` is this fragment only."""

    id: str
    seq: int
    index: int
    call_id: str | None
    name: str | None
    arguments: str


class ToolCallComplete(_Frame, tag="tool_call_complete", frozen=True, kw_only=True):
    """Tool call ``index`` in full, once, after its last fragment."""

    id: str
    seq: int
    index: int
    call_id: str | None
    name: str | None
    arguments: str


class ToolCall(Struct, frozen=True, kw_only=True):
    index: int
    call_id: str | None
    name: str | None
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        """The call as an OpenAI assistant message's ``tool_calls`` entry."""
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def assistant_message(
    content: str,
    tool_calls: Sequence[ToolCall] = (),
    reasoning: str = "",
    *,
    null_when_empty: bool = False,
) -> dict[str, Any]:
    """An answer as an OpenAI chat ``assistant`` message: the one shape the
    conversations' history, the kept responses and every surface use.

    ``content`` is the text, None when the answer is only tool calls (with
    ``null_when_empty``, whenever it is empty: the shape LiteLLM's
    ``stream_chunk_builder`` gives); ``tool_calls`` when there are any, a call
    the provider gave no id named ``call_{index}`` (a tool's result must name
    it); ``reasoning_content`` when there is reasoning.
    """
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        calls = []
        for call in tool_calls:
            entry = call.to_openai()
            if entry["id"] is None:
                entry["id"] = f"call_{call.index}"
            calls.append(entry)
        message["tool_calls"] = calls
    if not content and (tool_calls or null_when_empty):
        message["content"] = None
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


class PromptTokensDetails(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the provider said of the prompt's tokens (OpenAI's field names)."""

    cached_tokens: int | None = None


class CompletionTokensDetails(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the provider said of the completion's tokens (OpenAI's field names)."""

    reasoning_tokens: int | None = None


class Usage(Struct, frozen=True, kw_only=True):
    """Token counts: the provider's own, as it sent them, or tokenwire's
    estimate (``estimated``) when it sent none. ``total_tokens`` is the
    provider's total, which may count more than prompt + completion (xAI
    counts reasoning tokens only there). The details are set where the
    provider sent them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class Finish(_Frame, tag="finish", frozen=True, kw_only=True):
    """The generation ended normally or was cancelled: its terminal frame."""

    id: str
    seq: int
    reason: FinishReason
    content: str
    tool_calls: list[ToolCall]
    usage: Usage | None


class Error(_Frame, tag="error", frozen=True, kw_only=True, omit_defaults=True):
    """A generation failed (``id`` set), or a message could not be taken (``id`` null)."""

    id: str | None
    seq: int | None = None
    code: str
    message: str
    retryable: bool
    retry_after_ms: int | None = None


class ResetDone(_Frame, tag="reset_done", frozen=True, kw_only=True):
    """Sent after the terminal frames of every generation the reset cancelled."""

    cancelled: list[str]


ResumeFailure: TypeAlias = Literal["unknown", "expired", "gap"]


class Resumed(_Frame, tag="resumed", frozen=True, kw_only=True):
    """A ``resume`` taken: ``id`` null for the session itself (its conversations
    came back, the token stays valid); for a generation, its frames after
    ``after_seq`` follow, then its live frames."""

    id: str | None
    after_seq: int | None = None


class ResumeFailed(_Frame, tag="resume_failed", frozen=True, kw_only=True):
    """A ``resume`` not taken: ``id`` null for the session (the connection goes
    on as the new session its ``ready`` announced), else for that generation."""

    id: str | None
    reason: ResumeFailure


ServerFrame: TypeAlias = (
    Ready
    | Token
    | Reasoning
    | ToolCallChunk
    | ToolCallComplete
    | Finish
    | Error
    | ResetDone
    | Resumed
    | ResumeFailed
)
GenerationFrame: TypeAlias = Token | Reasoning | ToolCallChunk | ToolCallComplete | Finish | Error
"""The frames that belong to one generation (they carry its ``id`` and ``seq``)."""

TERMINAL_FRAMES = (Finish, Error)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of both directions, for clients in other languages."""
    (client, server), components = msgspec.json.schema_components(
        [ClientMessage, ServerFrame], ref_template="#/$defs/{name}"
    )
    return {"$defs": components, "client_message": client, "server_frame": server}
