"""A session's rules, with no I/O: what the session task decides, before and
after the sockets and the provider have their say.

``SessionCore`` takes decoded client messages and the events of a
generation's life and answers with frames and decisions: whether a
``generate`` is admitted (and the history it is sent with) or refused with
which ``error`` frame; which generations a ``cancel``, a ``reset``, the drain
or a disconnect stops; what a finished generation adds to its conversation;
what ``reset_done`` lists. It never awaits, never touches a socket or a
clock, and is tested on its own (``tests/server/test_core.py``, hypothesis
driving random message sequences against the contract's invariants).

Generations and sessions have named states and one transition function
each, which refuses an illegal move (``IllegalTransition``), the way
websockets' ``State`` and h11's table do::

    generation: PENDING ──► STREAMING ──► STOPPING ──► ENDED
                   │  └───────────┬───────────┘          ▲
                   └──────────────┴──────────────────────┘
    connection: OPEN ──► CLOSING (flush, then close) ──► CLOSED
                  │  └─► ABORTING (write nothing more) ──┘
                  └────► GONE (the peer went away) ───────┘
    session:    ATTACHED ◄──► DETACHED (dropped, resumable) ──► ENDED
                   └──────────────────────────────────────────────┘

A session outlives its connections when resume is on: ``ConnectionState``
is one connection's, ``SessionLife`` the session's own.

Every terminal path of a generation (finish, upstream error, cancel, reset,
shutdown, disconnect, slow reader) reaches ENDED exactly once, through
``ended``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec

from tokenwire.protocol import Error, ErrorCode, Finish, Generate, error_frame
from tokenwire.protocol.validation import quote

from ..errors import IllegalTransition

_encode_json: Final = msgspec.json.Encoder().encode


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON: how history is measured against its limits."""
    return len(_encode_json(value))


class GenerationState(enum.Enum):
    PENDING = "pending"
    """Admitted; its task has not run yet."""
    STREAMING = "streaming"
    STOPPING = "stopping"
    """Asked to stop (cancel, reset, drain, disconnect); its terminal frame follows."""
    ENDED = "ended"


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    """A close was asked (the drain): what is queued is written, then the close."""
    ABORTING = "aborting"
    """The reader is given up on (slow reader): nothing more is written."""
    GONE = "gone"
    """The peer closed the connection, or it failed."""
    CLOSED = "closed"


_GENERATION_MOVES: Final[Mapping[GenerationState, frozenset[GenerationState]]] = {
    GenerationState.PENDING: frozenset(
        {GenerationState.STREAMING, GenerationState.STOPPING, GenerationState.ENDED}
    ),
    GenerationState.STREAMING: frozenset({GenerationState.STOPPING, GenerationState.ENDED}),
    GenerationState.STOPPING: frozenset({GenerationState.ENDED}),
    GenerationState.ENDED: frozenset(),
}
_CONNECTION_MOVES: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.OPEN: frozenset(
        {
            ConnectionState.CLOSING,
            ConnectionState.ABORTING,
            ConnectionState.GONE,
            ConnectionState.CLOSED,
        }
    ),
    ConnectionState.CLOSING: frozenset(
        {ConnectionState.ABORTING, ConnectionState.GONE, ConnectionState.CLOSED}
    ),
    ConnectionState.ABORTING: frozenset({ConnectionState.GONE, ConnectionState.CLOSED}),
    ConnectionState.GONE: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


_State = TypeVar("_State", bound=enum.Enum)


def advance(
    moves: Mapping[_State, frozenset[_State]], state: _State, to: _State, what: str
) -> _State:
    """``to`` if ``moves`` allows it from ``state``, else ``IllegalTransition``."""
    if to not in moves[state]:
        raise IllegalTransition(f"{what}: {state.value} → {to.value}")
    return to


def advance_connection(state: ConnectionState, to: ConnectionState) -> ConnectionState:
    """A connection's one transition function: ``to``, or ``IllegalTransition``."""
    return advance(_CONNECTION_MOVES, state, to, "connection")


class SessionLife(enum.Enum):
    ATTACHED = "attached"
    """A connection serves it."""
    DETACHED = "detached"
    """Its connection dropped: its generations run on for ``orphan_timeout``,
    and a ``resume`` may attach a new connection until ``resume_ttl``."""
    ENDED = "ended"


_LIFE_MOVES: Final[Mapping[SessionLife, frozenset[SessionLife]]] = {
    SessionLife.ATTACHED: frozenset({SessionLife.ATTACHED, SessionLife.DETACHED}),
    SessionLife.DETACHED: frozenset({SessionLife.ATTACHED, SessionLife.ENDED}),
    SessionLife.ENDED: frozenset(),
}


def advance_life(state: SessionLife, to: SessionLife) -> SessionLife:
    """The session's one transition function (ATTACHED → ATTACHED: a resume
    takes the session from a connection that has not noticed it is dead)."""
    return advance(_LIFE_MOVES, state, to, "session")


class StopReason(enum.Enum):
    CANCEL = "cancelled"
    SHUTDOWN = "shutting_down"
    DISCONNECT = "disconnected"


class Conversation:
    """One conversation's history and its size in bytes (its messages as JSON)."""

    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.size = 0


@dataclass(slots=True, eq=False)
class Entry:
    """The core's record of one admitted generation."""

    request: Generate
    history: Conversation | None
    state: GenerationState = GenerationState.PENDING
    stop_reason: StopReason | None = None
    remote: bool = False
    """Running on another node: this one relays its stored frames."""

    @property
    def id(self) -> str:
        return self.request.id

    def move(self, to: GenerationState) -> None:
        """The generation's one transition function."""
        self.state = advance(_GENERATION_MOVES, self.state, to, f"generation {self.id}")


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_generations: int
    max_conversations: int
    max_history_bytes: int
    max_total_history_bytes: int
    max_loop_lag: float


@dataclass(frozen=True, slots=True)
class ServerView:
    """What admission needs to know of the server at that moment."""

    draining: bool = False
    loop_lag: float = 0.0
    history_bytes: int = 0
    """Bytes of history all sessions of the server keep."""


OVERLOAD_RETRY_MS: Final = 1000
"""When an ``overloaded`` client may try again."""


@dataclass(slots=True)
class SessionCore:
    """One session's generations and conversations, and the rules over them."""

    limits: SessionLimits
    models: frozenset[str]
    active: dict[str, Entry] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    history_bytes: int = 0
    """Bytes of history this session keeps (its part of the server's total)."""

    def admit(self, request: Generate, server: ServerView) -> Entry | Error:
        """Admit a ``generate`` (an ``Entry``, now active) or refuse it (its ``error``
        frame), checked in the contract's order."""
        gid = request.id
        if gid in self.active:
            return error_frame(
                None, ErrorCode.DUPLICATE_ID, f"generation {gid!r} is already active"
            )
        if server.draining:
            return error_frame(gid, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        if request.model not in self.models:
            return error_frame(
                gid,
                ErrorCode.UNKNOWN_MODEL,
                f"unknown model {quote(request.model)}; this server offers " + _listed(self.models),
            )
        if server.loop_lag > self.limits.max_loop_lag:
            return error_frame(
                gid,
                ErrorCode.OVERLOADED,
                f"the server is overloaded (its event loop runs "
                f"{server.loop_lag * 1000:.0f} ms late); retry shortly",
                retry_after_ms=OVERLOAD_RETRY_MS,
            )
        if len(self.active) >= self.limits.max_generations:
            return error_frame(
                gid,
                ErrorCode.TOO_MANY_GENERATIONS,
                f"the session already has {self.limits.max_generations} active generations",
            )
        history = None
        if (name := request.conversation) is not None:
            if any(e.request.conversation == name for e in self.active.values()):
                return error_frame(
                    gid,
                    ErrorCode.CONVERSATION_BUSY,
                    f"conversation {quote(name)} has an active generation",
                )
            refusal = self._conversation_limit(gid, name, request, server)
            if refusal is not None:
                return refusal
            history = self.conversations.get(name)
            if history is None:
                history = self.conversations[name] = Conversation()
        entry = Entry(request, history)
        self.active[gid] = entry
        return entry

    def _conversation_limit(
        self, gid: str, name: str, request: Generate, server: ServerView
    ) -> Error | None:
        """``conversation_limit`` when the generation would take a conversation
        past a limit (checked before it starts: history is never cut short)."""
        limits = self.limits
        conversation = self.conversations.get(name)
        if conversation is None and len(self.conversations) >= limits.max_conversations:
            return error_frame(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                f"the session already keeps {limits.max_conversations} conversations "
                "(server.max_conversations); reset to forget them",
            )
        size = (conversation.size if conversation else 0) + json_size(request.messages)
        if size > limits.max_history_bytes:
            return error_frame(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                f"conversation {quote(name)} would hold more than "
                f"{limits.max_history_bytes} bytes (server.max_history_bytes)",
            )
        if server.history_bytes + size > limits.max_total_history_bytes:
            return error_frame(
                gid,
                ErrorCode.CONVERSATION_LIMIT,
                "the server keeps as much conversation history as it may "
                "(server.max_total_history_bytes)",
            )
        return None

    def started(self, entry: Entry) -> None:
        """Its task runs (a stop asked before that is kept: it ends at once)."""
        if entry.state is GenerationState.PENDING:
            entry.move(GenerationState.STREAMING)

    def stop(self, gid: str, reason: StopReason) -> Entry | None:
        """Ask ``gid`` to stop; the entry, or None when it is not active or is
        already stopping (a ``cancel`` of such an id is ignored, as the contract says)."""
        entry = self.active.get(gid)
        if entry is None or entry.state in (GenerationState.STOPPING, GenerationState.ENDED):
            return None
        entry.stop_reason = reason
        entry.move(GenerationState.STOPPING)
        return entry

    def stop_all(self, reason: StopReason) -> list[Entry]:
        """Ask every active generation to stop; the ones asked now."""
        return [e for gid in list(self.active) if (e := self.stop(gid, reason)) is not None]

    def ended(self, entry: Entry, terminal: Finish | Error | None, answer: Any = None) -> int:
        """``entry`` ended with ``terminal`` (None: its frame could not be sent).

        A finish other than ``cancelled`` appends the request's messages and
        ``answer`` (the assistant message) to the conversation, if the session
        still keeps it (a reset forgets what a generation finishing after it
        adds). Returns the bytes added, for the server's total.
        """
        entry.move(GenerationState.ENDED)
        if self.active.get(entry.id) is entry:
            del self.active[entry.id]
        history = entry.history
        if (
            history is None
            or not isinstance(terminal, Finish)
            or terminal.reason == "cancelled"
            or answer is None
        ):
            return 0
        added = [*entry.request.messages, answer]
        size = json_size(added)
        history.messages.extend(added)
        history.size += size
        if self.conversations.get(entry.request.conversation or "") is history:
            self.history_bytes += size
            return size
        return 0

    def reset(self) -> tuple[list[Entry], list[Entry], int]:
        """A ``reset``: every active generation asked to stop and every
        conversation forgotten. Returns the active entries (the ids
        ``reset_done`` lists, those already stopping included), the ones asked
        to stop now, and the bytes of history freed."""
        entries = list(self.active.values())
        return entries, self.stop_all(StopReason.CANCEL), self.forget()

    def adopt(self, request: Generate) -> Entry:
        """A generation running elsewhere (another node, a resumed session),
        now tracked here so that admission and ``reset`` count it."""
        history = None
        if (name := request.conversation) is not None:
            history = self.conversations.setdefault(name, Conversation())
        entry = self.active[request.id] = Entry(request, history, remote=True)
        return entry

    def restore(self, name: str, messages: list[dict[str, Any]]) -> int:
        """Conversation ``name`` as the store holds it; the change in bytes kept."""
        conversation = self.conversations.setdefault(name, Conversation())
        size = json_size(messages)
        delta = size - conversation.size
        conversation.messages = messages
        conversation.size = size
        self.history_bytes += delta
        return delta

    def forget(self) -> int:
        """Forget every conversation; the bytes of history freed."""
        freed = self.history_bytes
        self.conversations = {}
        self.history_bytes = 0
        return freed


def _listed(models: frozenset[str], limit: int = 20) -> str:
    """The models offered, for an error message (the first ``limit``, sorted)."""
    names = sorted(models)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")
