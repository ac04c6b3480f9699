"""``serve --workers N``: N processes on one port that behave as one server.

The kernel spreads new connections over the workers' SO_REUSEPORT sockets,
so the connection that resumes a session, or continues a response with
``previous_response_id``, lands on any worker, whichever made it. With
``resume: redis`` the workers share Redis like nodes behind a load balancer
and nothing here is needed. Without it (``resume: memory``, the default, or
``off``) each worker keeps its sessions and responses in its own memory, and
the workers talk to each other over Unix sockets, one per worker, in a
directory the parent makes (mode 0700, removed at exit):

- A session's resume token begins with its worker's number and a dot
  (``1.Yq3…``). A ``resume`` that lands on another worker is *piped* to the
  owner (``pipe``): the worker opens a WebSocket to the owner's socket,
  presents the client's key and sends the same ``resume``; the answers and
  then every frame go back to the client byte for byte, and the client's
  messages go the other way. The session stays where its generations run: a
  resumed generation's frames take one extra local hop, and a connection
  that resumes nothing pays nothing.
- A stored response's id ends with its worker's number (``resp_…_1``):
  ``previous_response_id`` reads the chain from the worker that keeps it,
  one HTTP request over its socket (``stores.memory.MemoryResponses`` with peers).
- A worker that dies takes its sessions and responses with it, and only
  those: a piped connection is closed with 1011 (the client resumes again),
  a resume of its sessions hears ``unknown`` (the replacement worker never
  had them), a continuation of its responses ``previous_response_not_found``.
  Nothing waits longer than ``PEER_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
import structlog
import websockets
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.typing import Subprotocol

from tokenwire.protocol import Codec, Resume, Resumed, ResumeFailed

from .errors import CloseCode
from .stores import resume
from .stores.resume import Cause, new_token

if TYPE_CHECKING:
    from .metrics import Metrics
    from .sessions.link import Link
    from .stores.contract import KeptResponse

log = structlog.get_logger("tokenwire.workers")

PEER_TIMEOUT: Final = 5.0
"""Seconds a worker waits for another (to connect, to answer) before it
counts that worker as gone."""
CHAIN_PATH: Final = "/_tokenwire/responses/"
"""The route, on a worker's Unix socket only, that answers a response's chain."""
PEER_URI: Final = "ws://worker/v1/ws"


@dataclass(frozen=True, slots=True)
class Workers:
    """This worker's place among ``count`` workers sharing ``directory``."""

    directory: str
    number: int
    count: int

    def socket(self, number: int) -> str:
        return os.path.join(self.directory, f"worker-{number}.sock")

    def new_token(self) -> str:
        """A resume token that names this worker."""
        return f"{self.number}.{new_token()}"

    def token_owner(self, token: str) -> int | None:
        """The other worker a token names (None: this one's, or none)."""
        head, dot, _ = token.partition(".")
        return self._other(head if dot else "")

    def new_response_id(self) -> str:
        """A response id that names this worker."""
        return f"resp_{secrets.token_hex(16)}_{self.number}"

    def response_owner(self, response_id: str) -> int | None:
        """The other worker a response id names (None: this one's, or none)."""
        return self._other(response_id.rpartition("_")[2])

    def _other(self, text: str) -> int | None:
        if not text.isdigit() or len(text) > 6:
            return None
        number = int(text)
        return number if number != self.number and number < self.count else None

    def listening(self) -> None:
        """Before this worker listens: a socket left by the worker it replaces goes."""
        with contextlib.suppress(FileNotFoundError):
            Path(self.socket(self.number)).unlink()

    async def chain(self, owner: int, response_id: str) -> list[KeptResponse] | None:
        """Worker ``owner``'s chain of ``response_id`` (None: not kept, or the worker is gone)."""
        from .stores.contract import KeptResponse

        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.socket(owner))
                try:
                    writer.write(f"GET {CHAIN_PATH}{response_id} HTTP/1.1\r\n\r\n".encode())
                    answer = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("worker unreachable", worker=owner, error=repr(exc))
            return None
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            return None
        try:
            return msgspec.msgpack.decode(body, type=list[KeptResponse])
        except msgspec.DecodeError:
            return None


def encode_chain(chain: list[KeptResponse]) -> bytes:
    return msgspec.msgpack.encode(chain)


async def pipe(workers: Workers, metrics: Metrics, link: Link, message: Resume, owner: int) -> None:
    """Serve ``link``'s ``resume`` from worker ``owner``, which holds the session.

    The answers are passed on as they come. If the owner resumed the
    session, ``link`` is piped to it until either side closes (the owner's
    close code reaches the client); if not, the connection goes on here as
    the new session its ``ready`` announced, as after any failed resume.
    """
    fresh = link.session
    assert fresh is not None
    codec = link.codec
    headers = {"Authorization": f"Bearer {link.key.decode()}"} if link.key is not None else {}
    try:
        async with asyncio.timeout(PEER_TIMEOUT):
            peer = await unix_connect(
                workers.socket(owner),
                uri=PEER_URI,
                subprotocols=[Subprotocol(codec.encoding.subprotocol)],
                additional_headers=headers,
                compression=None,
                max_size=None,
            )
            await peer.recv()  # the owner's ready, for a session nobody uses
    except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
        log.warning("worker unreachable", worker=owner, error=repr(exc))
        unknown = [
            resume.failed(metrics, gid, "unknown", Cause.WORKER_GONE) for gid in message.generations
        ]
        link.send([*unknown, resume.failed(metrics, None, "unknown", Cause.WORKER_GONE)])
        return
    try:
        await peer.send(codec.encode(message), text=codec.encoding.is_text)
        if not await _answers(peer, link, codec):
            await peer.close()
            return
        fresh.discard()
        link.session = None
        log.info("session piped", worker=owner)
        await link.pass_through()
        # The owner counts the session as attached; this end is its pipe.
        metrics.attached.dec()
        try:
            await _pump(peer, link)
        finally:
            metrics.attached.inc()
    except websockets.ConnectionClosed:
        link.request_close(CloseCode.INTERNAL_ERROR)  # the owner died: resume again
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await peer.close()


async def _answers(peer: ClientConnection, link: Link, codec: Codec) -> bool:
    """Pass on the owner's answers to the resume, up to the session's own
    (each generation's replay with it); whether the session was resumed."""
    while True:
        frame = codec.decode_server(await peer.recv())
        link.send([frame] if frame is not None else [])
        if isinstance(frame, Resumed | ResumeFailed) and frame.id is None:
            return isinstance(frame, Resumed)


async def _pump(peer: ClientConnection, link: Link) -> None:
    """Frames from the owner to the client, messages from the client to the
    owner, until one side closes; the owner's close code goes to the client."""

    async def down() -> None:
        while True:
            link.forward(await peer.recv(decode=False))
            if link.behind:  # the client reads slowly: so does the pipe (the owner merges text)
                await link.drained()

    async def up() -> None:
        async for data in link.connection:
            await peer.send(data)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done:  # the owner closed
        code = peer.close_code
        link.request_close(_close_code(code))


def _close_code(code: int | None) -> CloseCode:
    """The code the client's connection closes with when the owner's closed
    with ``code``: the same, or 1011 when the owner went away abnormally
    (died: the client resumes again and hears ``unknown``)."""
    if code is None or code in (1000, 1006):
        return CloseCode.INTERNAL_ERROR if code != 1000 else CloseCode.GOING_AWAY
    try:
        return CloseCode(code)
    except ValueError:
        return CloseCode.INTERNAL_ERROR
