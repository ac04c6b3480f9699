"""Coverage-guided fuzzing of the client-message decoders with atheris.

Run by ``test_fuzz.py`` (or by hand: ``python tests/hardening/fuzz_codec.py
-max_total_time=60``). Every input must decode to a message or raise
``BadMessage``; anything else is a crash atheris reports with the input.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tokenwire.protocol import BadMessage, Codec, Encoding

JSON = Codec(Encoding.JSON)
MSGPACK = Codec(Encoding.MSGPACK)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    codec, payload = (
        (JSON, data[1:].decode("utf-8", "replace")) if data[0] & 1 else (MSGPACK, data[1:])
    )
    try:
        codec.decode_client(payload)
    except BadMessage as exc:
        assert len(exc.message) <= 300


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
