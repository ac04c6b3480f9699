"""The client's exceptions.

Exception tree::

    TokenwireError                 anything this package raises on purpose
    ├── GenerationError            the server ended a generation with an `error` frame
    ├── ConnectionLost             the connection dropped; pending generations end with it
    │   └── ServerProtocolError    the server sent a frame this client cannot read
    └── ConnectFailed              no session could be opened (refused, HTTP 401/403/404/503, ...)
"""

from __future__ import annotations

from tokenwire.protocol import Error, ErrorCode


class TokenwireError(Exception):
    """Root of the client's exceptions."""


class GenerationError(TokenwireError):
    """A generation failed: the server's ``error`` frame, as an exception.

    ``code`` is one of the contract's error codes (``ErrorCode``);
    ``retryable`` says whether sending the same request later may succeed, and
    ``retry_after_ms`` when the provider said when.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after_ms: int | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.generation_id = generation_id

    @classmethod
    def from_frame(cls, frame: Error) -> GenerationError:
        return cls(
            frame.code,
            frame.message,
            retryable=frame.retryable,
            retry_after_ms=frame.retry_after_ms,
            generation_id=frame.id,
        )

    @classmethod
    def local(cls, code: ErrorCode, message: str, generation_id: str | None) -> GenerationError:
        """An error the client raises itself, before sending (e.g. a duplicate id)."""
        return cls(code.value, message, retryable=code.retryable, generation_id=generation_id)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConnectionLost(TokenwireError):
    """The WebSocket connection closed while a generation or a reset was pending."""

    def __init__(
        self,
        message: str = "the connection to the server was lost",
        *,
        code: int | None = None,
        reason: str | None = None,
        resume_failure: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.resume_failure = resume_failure
        """Why the server could not resume the generation (``unknown``,
        ``expired``, ``gap``: its ``resume_failed`` reason); None when no
        resume was answered (the connection could not be reopened, or
        ``reconnect`` is off)."""


class ServerProtocolError(ConnectionLost):
    """The server sent a frame this client cannot read: the connection is
    closed (1002) and every pending generation ends with this error."""


class ConnectFailed(TokenwireError):
    """No session could be opened. ``status`` is the HTTP status the server
    answered the handshake with (401: a key is needed or wrong; 403: this
    origin is not allowed; 404: not a tokenwire URL; 503: the server is full
    or draining), or None when no HTTP answer came (refused, unreachable,
    timed out); the message says what to do."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, cause: str | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.cause = cause or (f"http_{status}" if status is not None else "error")
        """Why, in a word a report can count by: ``http_401``, ``refused``,
        ``timeout``, ``unknown_host``, ``unreachable``, ``reset``, ``bad_url``, ..."""
