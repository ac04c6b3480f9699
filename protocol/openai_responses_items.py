"""The output items a Responses answer streams: a message, a reasoning, a
function call (``ResponseEvents`` in ``openai_responses.py`` opens, feeds
and closes them), and their bodies in the finished response."""

from __future__ import annotations

from typing import Any


class OutputItem:
    """An output item being streamed: a message, a reasoning or a function call."""

    __slots__ = (
        "call_id",
        "delta_prefix",
        "delta_sse",
        "id",
        "index",
        "kind",
        "name",
        "parts",
        "status",
    )

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""
        self.delta_prefix = b""
        self.delta_sse = b""
        self.status = "in_progress"
        """``completed``, or ``incomplete`` when the response failed before it ended."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def text_events(self) -> str:
        """The prefix of a message's or a reasoning's text events (``.delta``, ``.done``)."""
        return "response.output_text" if self.kind == "message" else "response.reasoning_text"

    def part(self, text: str) -> dict[str, Any]:
        """The content part of a message (``output_text``) or reasoning (``reasoning_text``)."""
        if self.kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}

    def body(self, status: str) -> dict[str, Any]:
        content = [self.part(self.text)] if status != "in_progress" else []
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        if self.kind == "reasoning":
            return {
                "id": self.id,
                "type": "reasoning",
                "summary": [],
                "content": content,
                "status": status,
            }
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.text,
        }
