"""The asyncio client.

    async with connect("ws://127.0.0.1:8765/v1/ws") as client:
        gen = await client.generate(model="demo", messages=[{"role": "user", "content": "Hi"}])
        async for event in gen:
            ...
        result = await gen.result()

One connection, many generations at once; each ``AsyncGeneration`` is
independent. A reader task owns the socket's receiving side and routes every
frame to its generation.

With ``reconnect=True``, a dropped connection is resumed: the client
reconnects (backoff with jitter) and sends ``resume`` with the last ``seq``
of each generation in flight; their frames go on where they stopped, so an
iteration sees one unbroken stream, and the session's conversations come
back too. A generation the server cannot resume ends with ``ConnectionLost``
saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
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
from .errors import ConnectFailed, ConnectionLost


class AsyncGeneration(GenerationView):
    """One generation: iterate it for its events, await ``result()`` for the whole."""

    def __init__(self, client: AsyncClient, core: GenerationCore) -> None:
        self._client = client
        self._core = core
        self._events: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()
        self._done = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamEvent]:
        try:
            while True:
                item = await self._events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not self._core.done:  # left early (break or exception): stop it upstream
                with contextlib.suppress(ConnectionLost):
                    await self.cancel()

    async def result(self) -> Result:
        """The finished result; raises ``GenerationError`` or ``ConnectionLost``."""
        await self._done.wait()
        return self._core.result()

    async def cancel(self) -> None:
        """Cancel the generation and wait for its end; ``result()`` then says ``cancelled``."""
        if not self._core.done:
            await self._client._send(Cancel(id=self.id))
            await self._done.wait()

    def _take(self, frame: GenerationFrame) -> None:
        item = self._core.take(frame)
        self._events.put_nowait(item)
        if self._core.done:
            self._done.set()

    def _lose(self, exc: ConnectionLost) -> None:
        if self._core.lose(exc):
            self._events.put_nowait(exc)
            self._done.set()


class AsyncClient(ClientCore):
    """A connection to a tokenwire server; use ``connect()``."""

    def _setup(self) -> None:
        self._guard = contextlib.nullcontext()  # one thread: the table needs no lock
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._resets: deque[asyncio.Future[list[str]]] = deque()
        self._connecting = asyncio.Lock()
        self._recovering: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self._connection()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; pending generations end with ``ConnectionLost``."""
        self._closed = True
        if self._recovering is not None:
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def _connection(self) -> ClientConnection:
        """The open connection, (re)connecting first where needed and allowed."""
        async with self._connecting:
            if self._ws is not None and self._reader is not None and not self._reader.done():
                return self._ws
            if self._closed:
                raise ConnectionLost("the client is closed")
            if self._ws is not None and not self.reconnect:
                raise ConnectionLost("the connection is closed and reconnect is off")
            if self._ws is None:
                return await self._open()
            return await self._reopen()

    async def _reopen(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_timeout
        for delay in backoff_delays():
            try:
                return await self._open()
            except (*RECONNECT_ERRORS, ConnectFailed) as exc:
                if not worth_retrying(exc):
                    raise
                if loop.time() + delay > deadline:
                    break
                await asyncio.sleep(delay)
        raise ConnectionLost(f"could not reconnect within {self._reconnect_timeout:g} s")

    async def _open(self) -> ClientConnection:
        try:
            ws = await websockets.connect(
                self.url,
                subprotocols=[Subprotocol(self.encoding.subprotocol)],
                additional_headers=handshake_headers(self._api_key),
                open_timeout=self._open_timeout,
                max_size=self._max_frame_bytes,
                compression=None,
            )
        except CONNECT_ERRORS as exc:
            raise connect_failed(self.url, exc) from exc
        try:
            async with asyncio.timeout(self._open_timeout):
                ready = self._codec.decode_server(await ws.recv())
        except TimeoutError:
            await ws.close()
            raise not_tokenwire(self.url, f"no ready frame in {self._open_timeout:g} s") from None
        except BadMessage:
            await ws.close()
            raise not_tokenwire(self.url, "its first frame was not tokenwire's") from None
        except BaseException:
            await ws.close()
            raise
        if not isinstance(ready, Ready):
            await ws.close()
            raise not_tokenwire(self.url, "its first frame was not ready")
        if (resume := self._greeted(ready)) is not None:
            await ws.send(resume, text=self.encoding.is_text)
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name="tokenwire reader")
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        lost: ConnectionLost | None = None
        try:
            async for data in ws:
                try:
                    frame = self._codec.decode_server(data)
                except BadMessage as exc:  # the server broke the protocol: this connection ends
                    lost = server_protocol_error(exc)
                    await ws.close(1002, "protocol error")
                    break
                if (ids := self._take(frame)) is not None and self._resets:
                    self._resets.popleft().set_result(ids)
        except websockets.ConnectionClosed:
            pass
        finally:
            if lost is None:
                lost = ConnectionLost(code=ws.close_code, reason=ws.close_reason)
            while self._resets:
                self._resets.popleft().set_exception(lost)
            if self._resumes_after(lost):
                if self._generations:  # resume now: their frames are waiting
                    self._recovering = asyncio.create_task(self._recover(), name="tokenwire resume")
            else:
                self._lose_all(lost)

    def _drop(self) -> bool:
        """Cut the TCP connection as a network would (load tests); whether
        there was one to cut."""
        if self._ws is None or self._reader is None or self._reader.done():
            return False
        self._ws.transport.abort()
        return True

    def _send_again(self, requests: Sequence[Generate]) -> None:
        ws = self._ws
        assert ws is not None

        async def send() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):  # the next resume lists them
                for request in requests:
                    await ws.send(self._codec.encode(request), text=self.encoding.is_text)

        task = asyncio.create_task(send(), name="tokenwire send again")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _recover(self) -> None:
        """Reconnect and resume after a drop; the generations in flight end
        with ``ConnectionLost`` if that fails."""
        try:
            await self._connection()
        except (ConnectionLost, ConnectFailed) as exc:
            lost = exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc))
            self._lose_all(lost)

    async def _send(self, message: Any) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        if self.reconnect and (self._reader is None or self._reader.done()):
            ws = await self._connection()  # a cancel while resuming waits for it
        data = self._codec.encode(message)
        try:
            if self.encoding.is_text:
                await ws.send(data, text=True)
            else:
                await ws.send(data)
        except websockets.ConnectionClosed as exc:
            raise ConnectionLost(code=ws.close_code, reason=ws.close_reason) from exc

    # -- the protocol -------------------------------------------------------------

    async def generate(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        params: Params | Mapping[str, Any] | None = None,
        conversation: str | None = None,
        id: str | None = None,
    ) -> AsyncGeneration:
        """Start a generation; its frames arrive on the returned ``AsyncGeneration``.

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
        await self._connection()
        generation = AsyncGeneration(self, GenerationCore(message.id, model, message))
        self._add(generation)
        await self._send(message)
        return generation

    async def reset(self) -> list[str]:
        """Cancel every active generation and forget the session's conversations.

        Returns the ids the reset cancelled, once their terminal frames came.
        """
        await self._connection()
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._resets.append(done)
        await self._send(Reset())
        return await done


def connect(
    url: str,
    *,
    api_key: str | None = None,
    encoding: EncodingName = "json",
    reconnect: bool = False,
    open_timeout: float = OPEN_TIMEOUT,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> AsyncClient:
    """A client for ``url``; use it as ``async with connect(url) as client``.

    ``encoding`` is ``"json"`` (text frames) or ``"msgpack"`` (binary frames).
    With ``reconnect=True``, a dropped connection is reconnected, with
    exponential backoff and jitter, for up to ``reconnect_timeout`` seconds,
    and resumed where the server offers it (``ready.resume_token``): the
    generations in flight go on with no gap and no duplicate, and the
    session's conversations come back. Without resume, or if it fails, the
    generations in flight end with ``ConnectionLost``.
    """
    return AsyncClient(
        url,
        api_key=api_key,
        encoding=encoding,
        reconnect=reconnect,
        open_timeout=open_timeout,
        reconnect_timeout=reconnect_timeout,
        max_frame_bytes=max_frame_bytes,
    )
