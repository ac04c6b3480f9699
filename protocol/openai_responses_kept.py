"""A kept response, made again: its final object from its terminal frame
(a background response's, for ``GET /v1/responses/{id}``), the request its
stored object echoes, and its events after a sequence number (a replay's
``starting_after``)."""

from __future__ import annotations

from typing import Any

from .messages import Error, Finish, GenerationFrame, Token, ToolCallComplete
from .openai_responses import ResponseEvents
from .openai_responses_request import ECHOED, ResponseRequest


def stored_request(response: dict[str, Any]) -> ResponseRequest:
    """The request a stored response object echoes (what its events repeat):
    a replay's translator is made of it."""
    return ResponseRequest(
        model=str(response.get("model", "")),
        input=[],
        instructions=response.get("instructions"),
        tools=None,
        tool_choice=None,
        params={},
        previous_response_id=response.get("previous_response_id"),
        store=True,
        echo={name: response.get(name) for name in ECHOED},
    )


def finished(events: ResponseEvents, frame: Finish | Error) -> bytes:
    """The finished response object made of its terminal frame alone (its
    text and tool calls; streamed reasoning is not in it): what a
    background response keeps for ``GET /v1/responses/{id}``."""
    fresh = ResponseEvents(
        events.request, events.id, events.created_at, stream=False, background=events.background
    )
    if isinstance(frame, Finish):
        if frame.content:
            fresh.feed(Token(id=frame.id, seq=0, text=frame.content))
        for call in frame.tool_calls:
            fresh.feed(
                ToolCallComplete(
                    id=frame.id, seq=0, index=call.index, call_id=call.call_id,
                    name=call.name, arguments=call.arguments,
                )
            )  # fmt: skip
    return fresh.translate(frame)[0]


class After:
    """A response's events after a sequence number (``starting_after``): a
    replay's translator, made of one that translates from the first frame."""

    def __init__(self, events: ResponseEvents, after: int) -> None:
        self.events = events
        self.after = after
        self._next = 0
        """The sequence number of the next event made."""

    def _past(self, made: list[bytes]) -> list[bytes]:
        first = self._next
        self._next += len(made)
        return made[max(0, self.after + 1 - first) :]

    def opening(self) -> list[bytes]:
        return self._past(self.events.opening())

    def translate(self, frame: GenerationFrame) -> list[bytes]:
        return self._past(self.events.translate(frame))
