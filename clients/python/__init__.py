"""The tokenwire Python client (see clients/python/README.md).

``tokenwire.client`` is the asyncio client; ``tokenwire.client.sync`` has the
same API without ``await``.
"""

from tokenwire.protocol import (
    Reasoning,
    Result,
    Token,
    ToolCall,
    ToolCallChunk,
    ToolCallComplete,
    Usage,
)

from ._async import AsyncClient, AsyncGeneration, connect
from ._common import StreamEvent
from .errors import (
    ConnectFailed,
    ConnectionLost,
    GenerationError,
    ServerProtocolError,
    TokenwireError,
)

__all__ = [
    "AsyncClient",
    "AsyncGeneration",
    "ConnectFailed",
    "ConnectionLost",
    "GenerationError",
    "Reasoning",
    "Result",
    "ServerProtocolError",
    "StreamEvent",
    "Token",
    "TokenwireError",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallComplete",
    "Usage",
    "connect",
]
