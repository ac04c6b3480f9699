"""The tokenwire v1 wire protocol: messages, codecs, and the pure logic both sides share.

No I/O lives here: no asyncio, sockets, LiteLLM or logging. The server and the
clients feed this package data and act on what it returns.

- ``messages``: every client message and server frame as a frozen msgspec Struct.
- ``codec``: JSON and MessagePack encoders/decoders, built once per encoding.
- ``errors``: the contract's error codes and this package's exceptions.
- ``assembler``: normalized upstream deltas in, numbered frames out.
- ``result``: frames in, the finished result out (checking the invariants).
"""

from .assembler import (
    Delta,
    FrameAssembler,
    ToolCallDelta,
    error_frame,
    normalize_finish_reason,
)
from .codec import ENCODING_BY_SUBPROTOCOL, SUBPROTOCOL_BY_ENCODING, Codec, Encoding
from .errors import (
    BadMessage,
    ErrorCode,
    ProtocolError,
    ProtocolViolation,
    RepeatedOutput,
)
from .messages import (
    ID_PATTERN,
    PROTOCOL,
    TERMINAL_FRAMES,
    Cancel,
    ClientMessage,
    Error,
    Finish,
    FinishReason,
    Generate,
    GenerationFrame,
    Limits,
    Params,
    Ready,
    Reasoning,
    Reset,
    ResetDone,
    Resume,
    Resumed,
    ResumeFailed,
    ResumeFailure,
    ServerFrame,
    Token,
    ToolCall,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
    assistant_message,
    json_schema,
)
from .result import Result, ResultBuilder

__all__ = [
    "ENCODING_BY_SUBPROTOCOL",
    "ID_PATTERN",
    "PROTOCOL",
    "SUBPROTOCOL_BY_ENCODING",
    "TERMINAL_FRAMES",
    "BadMessage",
    "Cancel",
    "ClientMessage",
    "Codec",
    "Delta",
    "Encoding",
    "Error",
    "ErrorCode",
    "Finish",
    "FinishReason",
    "FrameAssembler",
    "Generate",
    "GenerationFrame",
    "Limits",
    "Params",
    "ProtocolError",
    "ProtocolViolation",
    "Ready",
    "Reasoning",
    "RepeatedOutput",
    "Reset",
    "ResetDone",
    "Result",
    "ResultBuilder",
    "Resume",
    "ResumeFailed",
    "ResumeFailure",
    "Resumed",
    "ServerFrame",
    "Token",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallComplete",
    "ToolCallDelta",
    "Usage",
    "assistant_message",
    "error_frame",
    "json_schema",
    "normalize_finish_reason",
]
