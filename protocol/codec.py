"""Encoding and decoding of messages, JSON or MessagePack.

A codec is built once per encoding and shared: msgspec encoders and decoders
are thread-safe and cheap to reuse, expensive to build.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final

import msgspec

from .errors import BadMessage
from .messages import ID_PATTERN, ClientMessage, ServerFrame


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

    __slots__ = ("_client_decoder", "_encoder", "_raw_decoder", "_server_decoder", "encoding")

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        if encoding is Encoding.JSON:
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self._client_decoder: Any = msgspec.json.Decoder(ClientMessage)
            self._server_decoder: Any = msgspec.json.Decoder(ServerFrame)
            self._raw_decoder: Any = msgspec.json.Decoder()
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._client_decoder = msgspec.msgpack.Decoder(ClientMessage)
            self._server_decoder = msgspec.msgpack.Decoder(ServerFrame)
            self._raw_decoder = msgspec.msgpack.Decoder()

    def encode(self, message: ServerFrame | ClientMessage) -> bytes:
        """The message as bytes; send JSON as a text frame, MessagePack as binary."""
        return self._encoder.encode(message)

    def decode_client(self, data: str | bytes) -> ClientMessage:
        """A client message, or ``BadMessage`` naming the problem and field path."""
        self._check_frame_kind(data)
        try:
            message: ClientMessage = self._client_decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise self._bad_message(exc, data) from None
        except msgspec.DecodeError as exc:
            raise BadMessage(f"invalid {self._format_name}: {exc}") from None
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
        except msgspec.DecodeError:
            return None

    def _bad_message(self, exc: msgspec.ValidationError, data: str | bytes) -> BadMessage:
        """A BadMessage for a message that parsed but did not validate.

        When the message is a ``generate`` whose own ``id`` is valid, the error
        carries that id so that it can be the generation's terminal frame.
        """
        raw = self._try_raw(data)
        generation_id = None
        if isinstance(raw, dict) and raw.get("type") == "generate":
            candidate = raw.get("id")
            if isinstance(candidate, str) and _ID_RE.match(candidate):
                generation_id = candidate
        return BadMessage(_strip_path(exc), path=_path_of(exc), generation_id=generation_id)


_SERVER_FRAME_TYPES: Final = frozenset(t.__struct_config__.tag for t in ServerFrame.__args__)


def _path_of(exc: msgspec.ValidationError) -> str | None:
    match = _PATH_RE.search(str(exc))
    return match.group(1) if match else None


def _strip_path(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with the path spelled ``at $.field`` for people."""
    text = str(exc)
    match = _PATH_RE.search(text)
    if match is None:
        return text
    return f"{text[: match.start()]} at {match.group(1)}"
