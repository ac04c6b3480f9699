"""The synchronous client: the same API as ``tokenwire.client``, without ``await``.

    from tokenwire.client.sync import connect

    with connect("ws://127.0.0.1:8765/v1/ws") as client:
        gen = client.generate(model="demo", messages=[{"role": "user", "content": "Hi"}])
        for event in gen:
            ...
        result = gen.result()

Built on ``websockets.sync``: one reader thread routes frames to generations;
any thread may start, iterate, await or cancel them.
"""

from __future__ import annotations

import contextlib
import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import websockets
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    Generate,
    GenerationFrame,
    Params,
    Ready,
    Reset,
    Result,
)

from ._common import (
    MAX_FRAME_BYTES,
    OPEN_TIMEOUT,
    RECONNECT_ERRORS,
    RECONNECT_TIMEOUT,
    ClientCore,
    EncodingName,
    GenerationCore,
    GenerationView,
    Message,
    StreamEvent,
    backoff_delays,
    generate_message,
    handshake_headers,
    new_id,
    server_protocol_error,
)
from ._connect import CONNECT_ERRORS, connect_failed, not_tokenwire, worth_retrying
from .errors import ConnectFailed, ConnectionLost, GenerationError

DIRECT: Final[dict[str, Any]] = (
    {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}
)
"""What ``websockets.sync``'s ``connect`` needs to hand the connection over
without a ``with`` block (websockets 17.1+: ``legacy=True``)."""


class Generation(GenerationView):
    """One generation: iterate it for its events, call ``result()`` for the whole."""

    def __init__(self, client: Client, core: GenerationCore) -> None:
        self._client = client
        self._core = core
        self._events: queue.SimpleQueue[StreamEvent | BaseException | None] = queue.SimpleQueue()
        self._done = threading.Event()

    def __iter__(self) -> Iterator[StreamEvent]:
        return self._iterate()

    def _iterate(self) -> Iterator[StreamEvent]:
        try:
            while True:
                item = self._events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not self._core.done:  # left early (break or exception): stop it upstream
                with contextlib.suppress(ConnectionLost):
                    self.cancel()

    def result(self) -> Result:
        """The finished result; raises ``GenerationError`` or ``ConnectionLost``."""
        self._done.wait()
        return self._core.result()

    def cancel(self) -> None:
        """Cancel the generation and wait for its end; ``result()`` then says ``cancelled``."""
        if not self._core.done:
            self._client._send(Cancel(id=self.id))
            self._done.wait()

    def _take(self, frame: GenerationFrame) -> None:
        item = self._core.take(frame)
        self._events.put(item)
        if self._core.done:
            self._done.set()

    def _lose(self, exc: ConnectionLost) -> None:
        if self._core.lose(exc):
            self._events.put(exc)
            self._done.set()


class Client(ClientCore):
    """A connection to a tokenwire server; use ``connect()``."""

    def _setup(self) -> None:
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None
        self._resets: deque[queue.SimpleQueue[list[str] | ConnectionLost]] = deque()
        self._lock = threading.Lock()  # guards the connection and the tables
        self._guard = self._lock

    def __enter__(self) -> Client:
        self._connection()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; pending generations end with ``ConnectionLost``."""
        self._closed = True
        if self._ws is not None:
            self._ws.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()

    def _connection(self) -> ClientConnection:
        with self._lock:
            if self._ws is not None and self._reader is not None and self._reader.is_alive():
                return self._ws
            if self._closed:
                raise ConnectionLost("the client is closed")
            if self._ws is not None and not self.reconnect:
                raise ConnectionLost("the connection is closed and reconnect is off")
            if self._ws is None:
                return self._open()
            return self._reopen()

    def _reopen(self) -> ClientConnection:
        deadline = time.monotonic() + self._reconnect_timeout
        for delay in backoff_delays():
            try:
                return self._open()
            except (*RECONNECT_ERRORS, ConnectFailed) as exc:
                if not worth_retrying(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    break
                time.sleep(delay)
        raise ConnectionLost(f"could not reconnect within {self._reconnect_timeout:g} s")

    def _open(self) -> ClientConnection:
        try:
            ws: ClientConnection = ws_connect(
                self.url,
                subprotocols=[Subprotocol(self.encoding.subprotocol)],
                additional_headers=handshake_headers(self._api_key),
                open_timeout=self._open_timeout,
                max_size=self._max_frame_bytes,
                compression=None,
                # The client owns the connection's lifetime, not a `with` block:
                # websockets 17.1+ asks for this flag to hand it over directly
                # (older ones, which the client-only install takes, know none).
                **DIRECT,
            )
        except CONNECT_ERRORS as exc:
            raise connect_failed(self.url, exc) from exc
        try:
            ready = self._codec.decode_server(ws.recv(timeout=self._open_timeout))
        except TimeoutError:
            ws.close()
            raise not_tokenwire(self.url, f"no ready frame in {self._open_timeout:g} s") from None
        except BadMessage:
            ws.close()
            raise not_tokenwire(self.url, "its first frame was not tokenwire's") from None
        except BaseException:
            ws.close()
            raise
        if not isinstance(ready, Ready):
            ws.close()
            raise not_tokenwire(self.url, "its first frame was not ready")
        if (resume := self._greeted(ready)) is not None:
            ws.send(resume, text=self.encoding.is_text)
        self._ws = ws
        self._reader = threading.Thread(
            target=self._read, args=(ws,), name="tokenwire reader", daemon=True
        )
        self._reader.start()
        return ws

    def _read(self, ws: ClientConnection) -> None:
        lost: ConnectionLost | None = None
        try:
            for data in ws:
                try:
                    frame = self._codec.decode_server(data)
                except BadMessage as exc:  # the server broke the protocol: this connection ends
                    lost = server_protocol_error(exc)
                    ws.close(1002, "protocol error")
                    break
                if (ids := self._take(frame)) is not None:
                    with self._lock:
                        waiter = self._resets.popleft() if self._resets else None
                    if waiter is not None:
                        waiter.put(ids)
        except websockets.ConnectionClosed:
            pass
        finally:
            if lost is None:
                lost = ConnectionLost(code=ws.close_code, reason=ws.close_reason)
            with self._lock:
                resets = list(self._resets)
                self._resets.clear()
                pending = bool(self._generations)
            for waiter in resets:
                waiter.put(lost)
            if self._resumes_after(lost):
                if pending:  # resume now: their frames are waiting
                    threading.Thread(
                        target=self._recover,
                        args=(threading.current_thread(),),
                        name="tokenwire resume",
                        daemon=True,
                    ).start()
            else:
                self._lose_all(lost)

    def _send_again(self, requests: Sequence[Generate]) -> None:
        ws = self._ws
        assert ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):  # the next resume lists them
            for request in requests:
                ws.send(self._codec.encode(request), text=self.encoding.is_text)

    def _recover(self, reader: threading.Thread) -> None:
        """Reconnect and resume after a drop (once ``reader``, the dropped
        connection's thread, has ended); the generations in flight end with
        ``ConnectionLost`` if that fails."""
        reader.join()
        try:
            self._connection()
        except (ConnectionLost, ConnectFailed) as exc:
            self._lose_all(exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc)))

    def _send(self, message: Any) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        if self.reconnect and (self._reader is None or not self._reader.is_alive()):
            ws = self._connection()  # a cancel while resuming waits for it
        data = self._codec.encode(message)
        try:
            if self.encoding.is_text:
                ws.send(data, text=True)
            else:
                ws.send(data)
        except websockets.ConnectionClosed as exc:
            raise ConnectionLost(code=ws.close_code, reason=ws.close_reason) from exc

    def generate(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        params: Params | Mapping[str, Any] | None = None,
        conversation: str | None = None,
        id: str | None = None,
    ) -> Generation:
        """Start a generation; its frames arrive on the returned ``Generation``.

        ``id`` is generated when None. A bad argument raises ``ValueError``; an
        ``id`` already active raises ``GenerationError`` (``duplicate_id``).
        """
        message = generate_message(
            id=id if id is not None else new_id(),
            model=model,
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            params=params,
            conversation=conversation,
        )
        self._connection()
        generation = Generation(self, GenerationCore(message.id, model, message))
        self._add(generation)
        self._send(message)
        return generation

    def reset(self) -> list[str]:
        """Cancel every active generation and forget the session's conversations.

        Returns the ids the reset cancelled, once their terminal frames came.
        """
        self._connection()
        waiter: queue.SimpleQueue[list[str] | ConnectionLost] = queue.SimpleQueue()
        with self._lock:
            self._resets.append(waiter)
        self._send(Reset())
        outcome = waiter.get()
        if isinstance(outcome, ConnectionLost):
            raise outcome
        return outcome


def connect(
    url: str,
    *,
    api_key: str | None = None,
    encoding: EncodingName = "json",
    reconnect: bool = False,
    open_timeout: float = OPEN_TIMEOUT,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Client:
    """A client for ``url``; use it as ``with connect(url) as client``.

    The same options as ``tokenwire.client.connect``.
    """
    return Client(
        url,
        api_key=api_key,
        encoding=encoding,
        reconnect=reconnect,
        open_timeout=open_timeout,
        reconnect_timeout=reconnect_timeout,
        max_frame_bytes=max_frame_bytes,
    )


__all__ = ["Client", "ConnectionLost", "Generation", "GenerationError", "connect"]
