"""The pure defences, driven by hypothesis: the decoders take any input
without an exception other than ``BadMessage``, the SSE parser gives the same
events however the stream is split, and upstream text split inside a
surrogate pair comes out whole."""

from __future__ import annotations

import itertools
import json
import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenwire.protocol import BadMessage, Codec, Delta, Encoding, FrameAssembler, Generate
from tokenwire.protocol.sanitize import MAX_COUNT, TextJoiner, count, usage
from tokenwire.protocol.sse import EventTooLarge, SseParser

JSON = Codec(Encoding.JSON)
MSGPACK = Codec(Encoding.MSGPACK)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_refuse(codec: Codec, data: str | bytes) -> None:
    try:
        codec.decode_client(data)
    except BadMessage as exc:
        assert exc.message and len(exc.message) <= 300


# -- the decoders: malformed input ------------------------------------------------


@FAST
@given(st.text(max_size=400))
def test_any_text_is_a_message_or_bad_message(text):
    _decode_or_refuse(JSON, text)


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_are_a_message_or_bad_message(data):
    _decode_or_refuse(MSGPACK, data)


# -- the decoders: well-formed but wrong -------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=4)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["type", "text", "role", "content", "image_url", "url", "function", "name", "parameters", "tool_call_id", "tool_calls", "id", "arguments", "file", "file_id"]), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@FAST
@given(messages=_values, tools=_values, tool_choice=_values, params=_values)
def test_any_generate_shape_is_taken_or_refused_with_its_id(messages, tools, tool_choice, params):
    message = {"type": "generate", "id": "g", "model": "m", "messages": messages}
    message |= {"tools": tools, "tool_choice": tool_choice, "params": params}
    for codec, data in (
        (MSGPACK, _msgpack(message)),
        (JSON, _json(message)),
    ):
        if data is None:
            continue
        try:
            decoded = codec.decode_client(data)
        except BadMessage as exc:
            assert exc.generation_id == "g", exc.message
            continue
        assert isinstance(decoded, Generate)
        # What is taken is plain JSON: it can go upstream unchanged.
        body = msgspec.json.encode([decoded.messages, decoded.tools, decoded.tool_choice])
        assert json.loads(body) is not None


def _msgpack(message: dict[str, object]) -> bytes | None:
    try:
        return msgspec.msgpack.encode(message)
    except (OverflowError, TypeError):
        return None


def _json(message: dict[str, object]) -> str | None:
    try:
        return json.dumps(message, allow_nan=False)
    except (ValueError, TypeError):
        return None


# -- the SSE parser -----------------------------------------------------------------

_events = st.lists(
    st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20), min_size=1, max_size=3),
    min_size=1,
    max_size=6,
)  # fmt: skip


@FAST
@given(
    events=_events, end=st.sampled_from(["\n", "\r\n", "\r"]), cuts=st.lists(st.integers(0, 400))
)
def test_sse_events_are_the_same_however_the_stream_is_split(events, end, cuts):
    stream = "".join(
        ": comment" + end + "event: x" + end + "".join(f"data: {line}{end}" for line in lines) + end
        for lines in events
    ).encode()
    expected = ["\n".join(lines).encode() for lines in events]
    parser = SseParser(1 << 16)
    got: list[bytes] = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, stop in itertools.pairwise(points):
        got += parser.feed(stream[start:stop])
    got += parser.close()
    assert got == expected


def test_sse_a_last_event_without_a_blank_line_is_not_lost():
    parser = SseParser()
    assert parser.feed(b"data: one\n\ndata: two") == [b"one"]
    assert parser.close() == [b"two"]


@pytest.mark.parametrize("stream", [b"data: " + b"x" * 2000, b"data: xxxx\n" * 300])
def test_sse_a_line_or_event_past_the_bound_raises_at_once(stream):
    parser = SseParser(1000)
    with pytest.raises(EventTooLarge):
        parser.feed(stream)


# -- values from an upstream ---------------------------------------------------------


@FAST
@given(
    text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_text_split_inside_surrogate_pairs_comes_out_whole(text, cuts):
    # Split as a provider's JSON escapes can split it: by UTF-16 code unit.
    split = _utf16_units(text)
    points = sorted({c % (len(split) + 1) for c in cuts} | {0, len(split)})
    join = TextJoiner()
    out = "".join(join("".join(split[a:b])) for a, b in itertools.pairwise(points))
    assert out == text


def _utf16_units(text: str) -> list[str]:
    units: list[str] = []
    for ch in text:
        if ord(ch) >= 0x10000:
            code = ord(ch) - 0x10000
            units += [chr(0xD800 + (code >> 10)), chr(0xDC00 + (code & 0x3FF))]
        else:
            units.append(ch)
    return units


def test_lone_surrogates_become_replacement_characters_and_frames_encode():
    assembler = FrameAssembler("g")
    frames = assembler.feed(Delta(text="a\udc00b"))
    frames += assembler.feed(Delta(text="c\ud800"))  # kept back: may pair with what follows
    frames += assembler.feed(Delta(text="d"))
    frames += assembler.finish()
    for codec in (JSON, MSGPACK):
        for frame in frames:
            codec.encode(frame)
    assert assembler.content == "a\ufffdbc\ufffdd"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(7, 7), (7.0, 7), (-3, 0), (2**70, MAX_COUNT), (math.inf, None), (math.nan, None), ("7", None), (True, None)],
)  # fmt: skip
def test_counts_from_an_upstream_are_sanitized(raw, expected):
    assert count(raw) == expected


def test_a_providers_total_is_kept_as_it_sent_it():
    counted = usage(12, 2, 354, reasoning=340, cached=5)
    assert (counted.prompt_tokens, counted.completion_tokens, counted.total_tokens) == (12, 2, 354)
    assert counted.completion_tokens_details is not None
    assert counted.completion_tokens_details.reasoning_tokens == 340
    assert usage(12, 2, None).total_tokens == 14
