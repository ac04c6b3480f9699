"""The pure core: deltas in, frames out, and back to a result (property tests)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwire.protocol import (
    TERMINAL_FRAMES,
    Codec,
    Delta,
    Encoding,
    ErrorCode,
    Finish,
    FrameAssembler,
    ProtocolViolation,
    Reasoning,
    RepeatedOutput,
    ResultBuilder,
    Token,
    ToolCallChunk,
    ToolCallComplete,
    ToolCallDelta,
    Usage,
    normalize_finish_reason,
)

texts = st.text(max_size=6)
fragments = st.builds(
    ToolCallDelta,
    index=st.integers(0, 3),
    call_id=st.none() | st.sampled_from(["call_a", "call_b"]),
    name=st.none() | st.sampled_from(["f", "g"]),
    arguments=st.text(max_size=5),
)
deltas = st.builds(
    Delta,
    text=texts,
    reasoning=texts,
    tool_calls=st.lists(fragments, max_size=2).map(tuple),
    finish_reason=st.none()
    | st.sampled_from(["stop", "length", "tool_calls", "function_call", "eos"]),
    usage=st.none()
    | st.builds(
        Usage,
        prompt_tokens=st.integers(0, 9),
        completion_tokens=st.integers(0, 9),
        total_tokens=st.integers(0, 18),
    ),
)
endings = st.sampled_from(["finish", "cancel", "fail"])


def _run(stream: list[Delta], ending: str, limit: int = 10_000, holds: list[int] = ()):
    """Feed ``stream``; ``holds`` says, delta by delta (cycling), 0: feed,
    1: feed with ``hold``, 2: flush then feed."""
    assembler = FrameAssembler("g", repeated_chunk_limit=limit)
    frames = []
    for i, delta in enumerate(stream):
        mode = holds[i % len(holds)] if holds else 0
        if mode == 2:
            frames.extend(assembler.flush())
        frames.extend(assembler.feed(delta, hold=mode == 1))
    if ending == "finish":
        frames.extend(assembler.finish())
    elif ending == "cancel":
        frames.extend(assembler.finish("cancelled"))
    else:
        frames += assembler.fail(ErrorCode.UPSTREAM_ERROR, "cut")
    return assembler, frames


@settings(max_examples=400)
@given(st.lists(deltas, max_size=25), endings, st.lists(st.integers(0, 2), max_size=6))
def test_any_delta_sequence_yields_frames_holding_invariants_1_to_4(stream, ending, holds):
    """Also with text held and merged anywhere (invariant 8)."""
    assembler, frames = _run(stream, ending, holds=holds)
    # 1. exactly one terminal frame, and it is the last
    assert sum(isinstance(f, TERMINAL_FRAMES) for f in frames) == 1
    assert isinstance(frames[-1], TERMINAL_FRAMES)
    # 2. seq from 0, by exactly 1
    assert [f.seq for f in frames] == list(range(len(frames)))
    # 3. tokens concatenate to the content
    tokens = "".join(f.text for f in frames if isinstance(f, Token))
    assert tokens == "".join(d.text for d in stream)
    assert "".join(f.text for f in frames if isinstance(f, Reasoning)) == "".join(
        d.reasoning for d in stream
    )
    if isinstance(frames[-1], Finish):
        assert frames[-1].content == tokens
    # 4. per tool call: chunks concatenate to complete and to finish.tool_calls
    by_index: dict[int, str] = {}
    for f in frames:
        if isinstance(f, ToolCallChunk):
            by_index[f.index] = by_index.get(f.index, "") + f.arguments
    if isinstance(frames[-1], Finish):
        completes = {f.index: f.arguments for f in frames if isinstance(f, ToolCallComplete)}
        assert completes == by_index
        assert {c.index: c.arguments for c in frames[-1].tool_calls} == by_index
        last_chunk = max(
            (i for i, f in enumerate(frames) if isinstance(f, ToolCallChunk)), default=-1
        )
        first_complete = min(
            (i for i, f in enumerate(frames) if isinstance(f, ToolCallComplete)),
            default=len(frames),
        )
        assert last_chunk < first_complete
    # and the builder agrees, frame by frame
    builder = ResultBuilder("g")
    for f in frames:
        builder.add(f)
    result = builder.result()
    assert result.content == assembler.content
    assert result.reasoning == assembler.reasoning
    assert result.tool_calls == assembler.tool_calls
    if ending == "cancel":
        assert result.reason == "cancelled"
    if ending == "fail":
        assert result.error is not None and result.reason is None


@settings(max_examples=200)
@given(st.lists(deltas, max_size=15), endings, st.sampled_from(list(Encoding)))
def test_frames_survive_both_encodings(stream, ending, encoding):
    _, frames = _run(stream, ending)
    codec = Codec(encoding)
    for frame in frames:
        data = codec.encode(frame)
        wire = data.decode() if encoding is Encoding.JSON else data
        assert codec.decode_server(wire) == frame


@given(st.lists(st.sampled_from(["", "a", "b"]), max_size=30), st.integers(1, 4))
def test_repeated_output_fires_exactly_past_the_limit(texts, limit):
    longest = max((len(list(g)) for t, g in itertools.groupby(texts) if t), default=0)
    assembler = FrameAssembler("g", repeated_chunk_limit=limit)
    try:
        for text in texts:
            assembler.feed(Delta(text=text))
    except RepeatedOutput:
        assert longest > limit
    else:
        assert longest <= limit


def test_held_text_merges_into_one_frame_until_another_kind_comes():
    assembler = FrameAssembler("g")
    assert assembler.feed(Delta(text="a"), hold=True) == []
    assert assembler.feed(Delta(text="b"), hold=True) == []
    assert assembler.holding
    # reasoning is another kind: the held text goes out first, merged
    frames = assembler.feed(Delta(reasoning="r"), hold=True)
    assert frames == [Token(id="g", seq=0, text="ab")]
    assert assembler.feed(Delta(reasoning="s"), hold=True) == []
    (tail, finish) = assembler.finish()
    assert tail == Reasoning(id="g", seq=1, text="rs")
    assert isinstance(finish, Finish) and finish.seq == 2 and finish.content == "ab"


def test_held_text_still_counts_for_the_repeated_chunk_check():
    assembler = FrameAssembler("g", repeated_chunk_limit=2)
    assembler.feed(Delta(text="x"), hold=True)
    assembler.feed(Delta(text="x"), hold=True)
    with pytest.raises(RepeatedOutput):
        assembler.feed(Delta(text="x"), hold=True)


def test_usage_from_the_upstream_reaches_finish():
    assembler = FrameAssembler("g")
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    assembler.feed(Delta(text="hi"))
    assembler.feed(Delta(usage=usage))
    (finish,) = assembler.finish()
    assert isinstance(finish, Finish) and finish.usage == usage


def test_nothing_is_taken_after_the_terminal_frame():
    assembler = FrameAssembler("g")
    assembler.finish()
    with pytest.raises(Exception, match="already ended"):
        assembler.feed(Delta(text="late"))
    with pytest.raises(Exception, match="already ended"):
        assembler.fail(ErrorCode.INTERNAL, "x")


@pytest.mark.parametrize(
    ("upstream", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        ("length", False, "length"),
        ("length", True, "length"),
        ("function_call", True, "tool_calls"),
        ("content_filter", False, "content_filter"),
        (None, True, "tool_calls"),
        (None, False, "stop"),
        ("end_turn", False, "stop"),
    ],
)
def test_finish_reasons_are_normalized(upstream, calls, expected):
    assert normalize_finish_reason(upstream, has_tool_calls=calls) == expected


# -- the builder catches peers that break the invariants -------------------------


def _frames():
    assembler = FrameAssembler("g")
    frames = [
        *assembler.feed(Delta(text="a")),
        *assembler.feed(Delta(tool_calls=(ToolCallDelta(index=0, name="f", arguments="{}"),))),
    ]
    return frames + assembler.finish()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda fs: [fs[0], *fs[2:]], "seq"),
        (lambda fs: [*fs, Token(id="g", seq=len(fs), text="late")], "after the terminal"),
        (lambda fs: [*fs[:-1], _replace(fs[-1], content="other")], "content"),
        (lambda fs: [*fs[:2], _replace(fs[2], arguments="{x}"), fs[3]], "arguments"),
        (lambda fs: [*fs[:-1], _replace(fs[-1], tool_calls=[])], "every streamed tool call"),
    ],
    ids=["gap", "after-terminal", "content", "tool-args", "missing-call"],
)
def test_the_builder_reports_each_broken_invariant(mutate, message):
    builder = ResultBuilder("g")
    with pytest.raises(ProtocolViolation, match=message):
        for frame in mutate(_frames()):
            builder.add(frame)


def _replace(frame, **changes):
    import msgspec

    return msgspec.structs.replace(frame, **changes)
