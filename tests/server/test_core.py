"""The session's rules without a socket: hypothesis drives random sequences of
client messages and generation events through ``SessionCore`` and checks the
contract's invariants after every step."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tokenwire.protocol import Error, Finish, Generate, Usage
from tokenwire.server.errors import IllegalTransition
from tokenwire.server.sessions.core import (
    ConnectionState,
    Entry,
    GenerationState,
    ServerView,
    SessionCore,
    SessionLimits,
    StopReason,
    advance_connection,
)

IDS = st.sampled_from(["a", "b", "c", "d", "e"])
CONVERSATIONS = st.sampled_from([None, "x", "y", "z"])
LIMITS = SessionLimits(
    max_generations=3,
    max_conversations=2,
    max_history_bytes=400,
    max_total_history_bytes=10_000,
    max_loop_lag=0.05,
)
REFUSED_BEFORE_START = {
    "shutting_down",
    "unknown_model",
    "overloaded",
    "too_many_generations",
    "conversation_busy",
    "conversation_limit",
}


def _request(gid: str, conversation: str | None, model: str = "m") -> Generate:
    messages = [{"role": "user", "content": f"hello {gid}"}]
    return Generate(id=gid, model=model, messages=messages, conversation=conversation)


def _finish(entry: Entry, reason: str) -> Finish:
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    return Finish(id=entry.id, seq=1, reason=reason, content="hi", tool_calls=[], usage=usage)  # type: ignore[arg-type]


class SessionRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = SessionCore(LIMITS, frozenset({"m"}))
        self.ended: list[Entry] = []
        self.admitted: list[Entry] = []
        self.kept: dict[str, list[dict[str, object]]] = {}  # what each conversation should hold

    @rule(gid=IDS, conversation=CONVERSATIONS, model=st.sampled_from(["m", "m", "nope"]),
          draining=st.booleans(), lag=st.sampled_from([0.0, 0.0, 0.2]))  # fmt: skip
    def generate(self, gid, conversation, model, draining, lag):
        was_active = gid in self.core.active
        before = dict(self.core.active)
        view = ServerView(draining=draining and lag == 0.0, loop_lag=lag)
        result = self.core.admit(_request(gid, conversation, model), view)
        if was_active:  # invariant 5's exception: null id, the active one goes on
            assert isinstance(result, Error) and result.code == "duplicate_id"
            assert result.id is None and self.core.active == before
            return
        if isinstance(result, Error):
            assert result.id == gid and result.seq == 0
            assert result.code in REFUSED_BEFORE_START
            assert self.core.active == before
            return
        assert result.state is GenerationState.PENDING and self.core.active[gid] is result
        self.admitted.append(result)

    @rule(gid=IDS)
    def start(self, gid):
        if (entry := self.core.active.get(gid)) is not None:
            self.core.started(entry)
            assert entry.state in (GenerationState.STREAMING, GenerationState.STOPPING)

    @rule(gid=IDS)
    def cancel(self, gid):
        entry = self.core.active.get(gid)
        stopped = self.core.stop(gid, StopReason.CANCEL)
        if entry is None:
            assert stopped is None  # a cancel of an id not active is ignored
        else:
            assert entry.state is GenerationState.STOPPING

    @rule(gid=IDS, outcome=st.sampled_from(["stop", "length", "tool_calls", "cancelled", "error"]))
    def end(self, gid, outcome):
        entry = self.core.active.get(gid)
        if entry is None:
            return
        if entry.state is GenerationState.STOPPING and outcome != "cancelled":
            outcome = "cancelled"  # a stopped generation ends cancelled (or already on its way)
        terminal: Finish | Error
        if outcome == "error":
            terminal = Error(id=gid, seq=1, code="upstream_error", message="x", retryable=True)
        else:
            terminal = _finish(entry, outcome)
        kept = (
            entry.history is not None
            and self.core.conversations.get(entry.request.conversation or "") is entry.history
        )
        answer = {"role": "assistant", "content": "hi"}
        self.core.ended(entry, terminal, answer)
        self.ended.append(entry)
        if kept and isinstance(terminal, Finish) and outcome != "cancelled":
            name = entry.request.conversation or ""
            self.kept.setdefault(name, []).extend([*entry.request.messages, answer])
        with pytest.raises(IllegalTransition):  # never twice
            self.core.ended(entry, terminal, answer)

    @rule()
    def reset(self):
        active = set(self.core.active)
        entries, _, _ = self.core.reset()
        assert {e.id for e in entries} == active  # what reset_done lists
        assert all(e.state is GenerationState.STOPPING for e in entries)
        assert self.core.conversations == {} and self.core.history_bytes == 0
        self.kept = {}

    @precondition(lambda self: self.core.active)
    @rule(reason=st.sampled_from(list(StopReason)))
    def stop_everything(self, reason):
        for entry in self.core.stop_all(reason):
            assert entry.stop_reason is reason

    @invariant()
    def limits_hold(self):
        assert len(self.core.active) <= LIMITS.max_generations
        assert len(self.core.conversations) <= LIMITS.max_conversations
        busy = [e.request.conversation for e in self.core.active.values() if e.request.conversation]
        assert len(busy) == len(set(busy))  # one active generation per conversation

    @invariant()
    def every_admitted_generation_ends_at_most_once(self):
        assert len(self.ended) == len({id(e) for e in self.ended})
        for entry in self.admitted:
            assert (entry.state is GenerationState.ENDED) == (entry in self.ended)
            assert (entry.state is not GenerationState.ENDED) == (
                self.core.active.get(entry.id) is entry
            )

    @invariant()
    def history_is_what_finished_generations_added(self):
        for name, conversation in self.core.conversations.items():
            assert conversation.messages == self.kept.get(name, [])
        assert self.core.history_bytes == sum(c.size for c in self.core.conversations.values())

    def teardown(self):
        # The connection goes away: every generation still active ends, once.
        for entry in self.core.stop_all(StopReason.DISCONNECT):
            assert entry.stop_reason is StopReason.DISCONNECT
        for entry in list(self.core.active.values()):
            self.core.ended(entry, None)
        assert not self.core.active
        assert all(e.state is GenerationState.ENDED for e in self.admitted)


TestSessionRules = SessionRules.TestCase
TestSessionRules.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_illegal_moves_are_refused():
    with pytest.raises(IllegalTransition):
        advance_connection(ConnectionState.CLOSED, ConnectionState.OPEN)
    with pytest.raises(IllegalTransition):
        advance_connection(ConnectionState.GONE, ConnectionState.CLOSING)
    assert (
        advance_connection(ConnectionState.OPEN, ConnectionState.CLOSING) is ConnectionState.CLOSING
    )
    core = SessionCore(LIMITS, frozenset({"m"}))
    entry = core.admit(_request("a", None), ServerView())
    assert isinstance(entry, Entry)
    core.ended(entry, None)
    with pytest.raises(IllegalTransition):
        entry.move(GenerationState.STREAMING)
