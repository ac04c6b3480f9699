"""How the Redis store packs a stream entry's frames (``pack_frames``): a
token numbered on to the entry's id is its bare text, anything else whole;
unpacked, the frames are exactly the ones packed."""

from __future__ import annotations

from tokenwire.protocol import Finish, Reasoning, Token, ToolCallChunk
from tokenwire.server.stores.redis_keys import entry_id, pack_frames, unpack_frames


def test_frames_come_back_exactly_and_a_following_token_costs_its_text() -> None:
    frames = [
        Token(id="g", seq=7, text="Hel"),
        Token(id="g", seq=8, text="lo"),
        Reasoning(id="g", seq=9, text="hm"),
        Token(id="g", seq=10, text=" there"),
        ToolCallChunk(id="g", seq=11, index=0, call_id="c", name="f", arguments="{}"),
        Token(id="g", seq=13, text="skipped one"),  # not numbered on: kept whole
        Finish(id="g", seq=14, reason="stop", content="Hello there", tool_calls=[], usage=None),
    ]
    packed = pack_frames(frames)
    assert unpack_frames("g", entry_id(14).encode(), packed) == frames
    lone = pack_frames([Token(id="g", seq=500, text="tok ")])
    assert len(lone) == 5  # the text, and its length
    assert unpack_frames("g", entry_id(500).encode(), lone) == [Token(id="g", seq=500, text="tok ")]
    assert unpack_frames("g", entry_id(10).encode(), pack_frames(frames[3:4])) == frames[3:4]
