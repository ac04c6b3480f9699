"""Server-sent events, parsed as the HTML standard defines them, within a bound.

An upstream's stream is parsed incrementally: ``feed`` takes bytes as they
arrive and returns the ``data`` of each event they complete. Lines end in
``\\n``, ``\\r\\n`` or a bare ``\\r``; a field's ``data`` lines join with
``\\n``; comments (``:``) and the ``event``, ``id`` and ``retry`` fields are
read and dropped; ``close`` returns an event the stream ended without a
blank line after (the standard drops it; providers' last event is sometimes
sent that way, and dropping it would lose the answer's end).

A line or an event longer than ``max_event_bytes`` raises ``EventTooLarge``
as soon as it is seen, so a stream of one endless line costs bounded memory.
"""

from __future__ import annotations

from typing import Final

from .errors import ProtocolError

DEFAULT_MAX_EVENT_BYTES: Final = 1 << 20


class EventTooLarge(ProtocolError):
    """A line or event of the stream is longer than the parser's bound."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event of the stream is longer than {limit} bytes")
        self.limit = limit


class SseParser:
    """One stream's events: ``feed(bytes) -> [data, ...]``, then ``close()``."""

    __slots__ = ("_data", "_limit", "_rest", "_size")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._limit = max_event_bytes
        self._rest = b""
        self._data: list[bytes] | None = None  # the current event's data lines
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self._rest:
            data = self._rest + data
        if b"\r" in data:
            # A final \r may be the first half of \r\n: keep it for the next read.
            keep_cr = data.endswith(b"\r")
            if keep_cr:
                data = data[:-1]
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                data += b"\r"
        lines = data.split(b"\n")
        self._rest = rest = lines.pop()
        if len(rest) > self._limit:
            raise EventTooLarge(self._limit)
        return self._lines(lines)

    def close(self) -> list[bytes]:
        """The event the stream ended in, if it was not followed by a blank line."""
        rest = self._rest.rstrip(b"\r")
        self._rest = b""
        events = self._lines([rest, b""] if rest else [b""])
        return events

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        for line in lines:
            if not line:  # a blank line dispatches the event
                if self._data is not None:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = None
                    self._size = 0
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif line == b"data":
                value = b""
            else:
                continue  # a comment, `event:`, `id:`, `retry:` or an unknown field
            self._size += len(value) + 1
            if self._size > self._limit:
                raise EventTooLarge(self._limit)
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        return events
