"""Message types and codecs."""

from __future__ import annotations

import msgspec
import pytest

from tokenwire.protocol import (
    BadMessage,
    Cancel,
    Codec,
    Encoding,
    Error,
    Generate,
    Params,
    Reset,
    json_schema,
)

json_codec = Codec(Encoding.JSON)
msgpack_codec = Codec(Encoding.MSGPACK)


def test_client_messages_decode_in_both_encodings():
    message = {
        "type": "generate",
        "id": "a.b:c-1_2",
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"temperature": 0.2, "n": 1},
        "conversation": "c",
    }
    from_json = json_codec.decode_client(msgspec.json.encode(message).decode())
    from_msgpack = msgpack_codec.decode_client(msgspec.msgpack.encode(message))
    assert from_json == from_msgpack
    assert isinstance(from_json, Generate) and from_json.params == Params(temperature=0.2, n=1)
    assert json_codec.decode_client('{"type":"cancel","id":"x"}') == Cancel(id="x")
    assert json_codec.decode_client('{"type":"reset"}') == Reset()


def test_params_to_dict_keeps_only_what_was_given():
    assert Params(temperature=0.0, stop="x").to_dict() == {"temperature": 0.0, "stop": "x"}


@pytest.mark.parametrize("length", [0, 65])
def test_ids_are_1_to_64_characters(length):
    raw = msgspec.json.encode(
        {"type": "generate", "id": "a" * length, "model": "m", "messages": [{}]}
    ).decode()
    with pytest.raises(BadMessage) as info:
        json_codec.decode_client(raw)
    assert info.value.path == "$.id" and info.value.generation_id is None


def test_a_bad_generate_keeps_its_valid_id_for_the_error():
    raw = '{"type":"generate","id":"ok","model":"m","messages":[{}],"params":{"n":3}}'
    with pytest.raises(BadMessage) as info:
        json_codec.decode_client(raw)
    assert (info.value.generation_id, info.value.path) == ("ok", "$.params.n")
    assert "$.params.n" in str(info.value)


def test_error_frames_omit_what_they_do_not_have():
    frame = Error(id=None, code="bad_message", message="m", retryable=False)
    assert msgspec.json.decode(json_codec.encode(frame)) == {
        "type": "error",
        "id": None,
        "code": "bad_message",
        "message": "m",
        "retryable": False,
    }


def test_clients_ignore_unknown_frame_types_and_fields():
    assert json_codec.decode_server('{"type":"hologram","x":1}') is None
    frame = json_codec.decode_server('{"type":"token","id":"g","seq":0,"text":"t","color":"red"}')
    assert frame is not None and frame.text == "t"  # type: ignore[union-attr]


def test_a_malformed_known_frame_is_reported():
    with pytest.raises(BadMessage, match=r"\$\.seq"):
        json_codec.decode_server('{"type":"token","id":"g","seq":"zero","text":"t"}')


def test_the_json_schema_covers_both_directions():
    schema = json_schema()
    assert {"Generate", "Cancel", "Reset", "Token", "Finish", "Error", "ResetDone"} <= set(
        schema["$defs"]
    )
