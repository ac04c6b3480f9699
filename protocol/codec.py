"""Encoding and decoding of messages, JSON or MessagePack.

A codec is built once per encoding and shared: msgspec encoders and decoders
are thread-safe and cheap to reuse, expensive to build.
"""

from __future__ import annotations

import contextlib
import enum
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec

from .errors import BadMessage
from .messages import ID_PATTERN, ClientMessage, Generate, ServerFrame
from .validation import cap, check_generate


class Encoding(enum.StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"

    @property
    def subprotocol(self) -> str:
        return SUBPROTOCOL_BY_ENCODING[self]

    @property
    def is_text(self) -> bool:
        """JSON travels in text frames, MessagePack in binary frames."""
        return self is Encoding.JSON


SUBPROTOCOL_BY_ENCODING: Final = {
    Encoding.JSON: "tokenwire.v1",
    Encoding.MSGPACK: "tokenwire.v1.msgpack",
}
ENCODING_BY_SUBPROTOCOL: Final = {v: k for k, v in SUBPROTOCOL_BY_ENCODING.items()}

_ID_RE: Final = re.compile(ID_PATTERN)
_PATH_RE: Final = re.compile(r" - at `(\$[^`]*)`$")


class Codec:
    """Both directions of one encoding.

    ``decode_client`` and ``decode_server`` take what a WebSocket ``recv``
    returns (``str`` for a text frame, ``bytes`` for a binary frame) and check
    that the frame kind matches the encoding.
    """

    __slots__ = (
        "_client_decoder",
        "_encoder",
        "_envelope_decoder",
        "_raw_decoder",
        "_server_decoder",
        "encoding",
    )

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        if encoding is Encoding.JSON:
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self._client_decoder: Any = msgspec.json.Decoder(ClientMessage)
            self._server_decoder: Any = msgspec.json.Decoder(ServerFrame)
            self._raw_decoder: Any = msgspec.json.Decoder()
            self._envelope_decoder: Any = msgspec.json.Decoder(_Envelope)
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._client_decoder = msgspec.msgpack.Decoder(ClientMessage)
            self._server_decoder = msgspec.msgpack.Decoder(ServerFrame)
            self._raw_decoder = msgspec.msgpack.Decoder()
            self._envelope_decoder = msgspec.msgpack.Decoder(_Envelope)

    def encode(self, message: ServerFrame | ClientMessage) -> bytes:
        """The message as bytes; send JSON as a text frame, MessagePack as binary."""
        return self._encoder.encode(message)

    def decode_client(self, data: str | bytes) -> ClientMessage:
        """A client message, or ``BadMessage`` naming the problem and field path."""
        self._check_frame_kind(data)
        try:
            message: ClientMessage = self._client_decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise self._bad_message(_strip_path(exc), _path_of(exc), data) from None
        except msgspec.DecodeError as exc:
            raise BadMessage(cap(f"invalid {self._format_name}: {exc}")) from None
        except RecursionError:  # msgspec's own nesting limit, not a DecodeError
            raise self._bad_message(
                f"{self._format_name} nested too deeply", None, data, deep=True
            ) from None
        if isinstance(message, Generate):
            check_generate(message, from_json=self.encoding is Encoding.JSON)
        return message

    def decode_server(self, data: str | bytes) -> ServerFrame | None:
        """A server frame, or None for a frame type this version does not know.

        Unknown fields are ignored, so that later servers may add them.
        """
        self._check_frame_kind(data)
        try:
            frame: ServerFrame = self._server_decoder.decode(data)
        except msgspec.ValidationError as exc:
            raw = self._try_raw(data)
            kind = raw.get("type") if isinstance(raw, dict) else None
            if isinstance(kind, str) and kind not in _SERVER_FRAME_TYPES:
                return None
            raise BadMessage(_strip_path(exc), path=_path_of(exc)) from None
        except msgspec.DecodeError as exc:
            raise BadMessage(f"invalid {self._format_name}: {exc}") from None
        except RecursionError:
            raise BadMessage(f"{self._format_name} nested too deeply") from None
        return frame

    @property
    def _format_name(self) -> str:
        return "JSON" if self.encoding is Encoding.JSON else "MessagePack"

    def _check_frame_kind(self, data: str | bytes) -> None:
        if self.encoding.is_text and not isinstance(data, str):
            raise BadMessage(f"binary frame on {self.encoding.subprotocol}: send JSON as text")
        if not self.encoding.is_text and isinstance(data, str):
            raise BadMessage(
                f"text frame on {self.encoding.subprotocol}: send MessagePack as binary"
            )

    def _try_raw(self, data: str | bytes) -> Any:
        try:
            return self._raw_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError):
            return None

    def _bad_message(
        self, message: str, path: str | None, data: str | bytes, *, deep: bool = False
    ) -> BadMessage:
        """A BadMessage for a message that did not validate (or nested too deeply).

        When the message is a ``generate`` whose own ``id`` is valid, the error
        carries that id so that it can be the generation's terminal frame. The
        id is read from the top level alone, skipping the other values (which
        may be what is wrong), iteratively when the message is too deep for
        msgspec.
        """
        envelope: Mapping[str, Any] | None
        if deep:
            envelope = top_level_strings(data)
        else:
            try:
                decoded = self._envelope_decoder.decode(data)
                envelope = {"type": decoded.type, "id": decoded.id}
            except (msgspec.DecodeError, RecursionError):
                envelope = top_level_strings(data)
        generation_id = None
        if envelope is not None and envelope.get("type") == "generate":
            candidate = envelope.get("id")
            if isinstance(candidate, str) and _ID_RE.match(candidate):
                generation_id = candidate
        return BadMessage(cap(message), path=path, generation_id=generation_id)


class _Envelope(msgspec.Struct):
    """A message's ``type`` and ``id``, every other field skipped unread."""

    type: Any = None
    id: Any = None


_SERVER_FRAME_TYPES: Final = frozenset(t.__struct_config__.tag for t in ServerFrame.__args__)


_any_json: Final = msgspec.json.Decoder()
NESTED_TOO_DEEPLY: Final = "JSON nested too deeply"


@contextlib.contextmanager
def too_deep_is_bad_message() -> Iterator[None]:
    """Turn the ``RecursionError`` of walking a JSON value msgspec decoded,
    but nested too deeply for Python to walk, into ``BadMessage``."""
    try:
        yield
    except RecursionError:
        raise BadMessage(NESTED_TOO_DEEPLY) from None


def decode_json(data: str | bytes) -> Any:
    """A JSON body of any shape (the HTTP surfaces', the Responses mode's), or
    ``BadMessage``: invalid JSON, or JSON nested past what msgspec decodes
    (it raises ``RecursionError`` there, not a ``DecodeError``)."""
    try:
        return _any_json.decode(data)
    except msgspec.DecodeError as exc:
        raise BadMessage(cap(f"invalid JSON: {exc}")) from None
    except RecursionError:
        raise BadMessage(NESTED_TOO_DEEPLY) from None


def split_path(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's message without its path, and the path (``$.field``; None: none)."""
    text = str(exc)
    match = _PATH_RE.search(text)
    if match is None:
        return text, None
    return text[: match.start()], match.group(1)


def _path_of(exc: msgspec.ValidationError) -> str | None:
    return split_path(exc)[1]


def _strip_path(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with the path spelled ``at $.field`` for people."""
    message, path = split_path(exc)
    return message if path is None else f"{message} at {path}"


# -- a message's top-level strings, read without recursion ---------------------
#
# A message nested past msgspec's limit (``[[[[…]]]]`` inside a ``generate``)
# cannot be decoded at all, yet its ``id`` is readable: these scanners walk
# the top level and skip nested values with a counter, never a call stack.

_JSON_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')
_WANTED: Final = ("type", "id")


def top_level_strings(data: str | bytes) -> dict[str, str] | None:
    """The top-level ``type`` and ``id`` of a JSON or MessagePack object, where
    they are strings; None when the data is not an object."""
    try:
        if isinstance(data, str):
            return _json_top_level(data)
        return _msgpack_top_level(memoryview(data))
    except (ValueError, IndexError, struct.error, msgspec.DecodeError):
        return None


def _json_top_level(text: str) -> dict[str, str] | None:
    if not text.lstrip().startswith("{"):
        return None
    found: dict[str, str] = {}
    depth = 0
    key: str | None = None
    last_string: str | None = None
    expecting = False  # just read `"key":` at the top level
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            if depth == 1 and expecting and key in _WANTED:
                found[key] = msgspec.json.decode(token)
                if len(found) == len(_WANTED):
                    break
            last_string = token
            expecting = False
        elif first == ":":
            if depth == 1 and last_string is not None:
                key = msgspec.json.decode(last_string)
                expecting = True
        else:
            expecting = False
            last_string = None
            depth += 1 if first in "[{" else -1 if first in "]}" else 0
            if depth == 0:
                break
    return found


def _msgpack_item(buf: memoryview, pos: int) -> tuple[int, int, int]:
    """One item's header at ``pos``: (payload start, payload size, children)."""
    b = buf[pos]
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
        return pos + 1, 0, 0
    if 0x80 <= b <= 0x8F:
        return pos + 1, 0, 2 * (b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return pos + 1, 0, b & 0x0F
    if 0xA0 <= b <= 0xBF:
        return pos + 1, b & 0x1F, 0
    sized = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
    if b in sized:
        n = sized[b]
        return pos + 1 + n, int.from_bytes(buf[pos + 1 : pos + 1 + n], "big"), 0
    ext = {0xC7: 1, 0xC8: 2, 0xC9: 4}
    if b in ext:
        n = ext[b]
        return pos + 2 + n, int.from_bytes(buf[pos + 1 : pos + 1 + n], "big"), 0
    fixed = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
    fixed |= {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    if b in fixed:
        return pos + 1, fixed[b], 0
    fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if b in fixext:
        return pos + 2, fixext[b], 0
    containers = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
    if b in containers:
        n, per = containers[b]
        return pos + 1 + n, 0, per * int.from_bytes(buf[pos + 1 : pos + 1 + n], "big")
    raise ValueError("invalid MessagePack")


def _msgpack_skip(buf: memoryview, pos: int) -> int:
    """The position after the item at ``pos``, nested items included."""
    remaining = 1
    while remaining:
        start, size, children = _msgpack_item(buf, pos)
        pos = start + size
        if pos > len(buf):
            raise ValueError("truncated MessagePack")
        remaining += children - 1
    return pos


def _is_msgpack_str(header: int) -> bool:
    return 0xA0 <= header <= 0xBF or header in (0xD9, 0xDA, 0xDB)


def _msgpack_top_level(buf: memoryview) -> dict[str, str] | None:
    if not (0x80 <= buf[0] <= 0x8F or buf[0] in (0xDE, 0xDF)):
        return None
    start, _, children = _msgpack_item(buf, 0)
    found: dict[str, str] = {}
    pos = start
    for _ in range(children // 2):
        key_end = _msgpack_skip(buf, pos)
        key = msgspec.msgpack.decode(buf[pos:key_end])
        value_end = _msgpack_skip(buf, key_end)
        if key in _WANTED and _is_msgpack_str(buf[key_end]):
            found[key] = msgspec.msgpack.decode(buf[key_end:value_end])
        pos = value_end
    return found
