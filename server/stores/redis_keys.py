"""``resume: redis``: the keys, scripts and encodings of the Redis store.

Keys, for a session named by its token's hash ``h`` (the token itself is
never stored), all expiring ``resume_ttl`` + ``orphan_timeout`` + 60 s after
their last write (refreshed while the session lives). ``{h}`` is written in
braces, a hash tag: on a Redis Cluster all of a session's keys are in one
slot, so one script call stores them together::

    tw:{h}:s          hash   key (the API key's hash), id, deadline (when a
                             resume stops being possible; 0 while attached),
                             g:<gid> (owner node), r:<gid> (the generate),
                             lost:<gid> (why some of its frames are not
                             kept: a ``resume.Cause``)
    tw:{h}:c          hash   conversation name → its messages (JSON)
    tw:{h}:g:<gid>    stream one entry per stored batch of a generation's
                             frames (``pack_frames``), id 0-<last seq + 1>:
                             ids grow with seq, so a duplicate write is refused
    tw:{h}:l:<gid>    string the owner node's lease on a running generation
    tw:{h}:x:<gid>    string a cancel asked from another node
    tw:{h}:w:<gid>    string another node relays the generation to its client
    tw:node:<node>    channel cancels for that node's generations (sharded
                             on a cluster)
    tw:r:<id>         string a response kept for ``previous_response_id``
    tw:ui:<name>      string a UI chat's resumable answer

A frame reaches the client only once stored. The frames of all of a
node's sessions are coalesced for ``COALESCE`` seconds and stored in one
pipelined round trip: one XADD (with MAXLEN) per generation with frames in
the batch; a stream's EXPIRE goes with its first and last entries and with
each lease renewal, not with every entry. When Redis cannot be reached, frames go to the client
unstored, the outage is logged and counted once, ``ready`` says resume is
off, and a probe brings it back; a resume that would need the missing frames
gets ``gap`` (replays check that seqs are contiguous).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

import msgspec

from tokenwire.protocol import Error, ErrorCode, Generate, GenerationFrame, Token, error_frame

from .contract import Record, Replay
from .resume import Cause, seq_of

APPEND: Final = """
local maxlen, ttl = ARGV[1], ARGV[2]
local refused = {''}
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 4
  local id, data, minid, expire = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local reply
  if minid == '' then
    reply = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, id, 'f', data)
  else
    reply = redis.pcall('XADD', key, 'MINID', minid, id, 'f', data)
  end
  local err = type(reply) == 'table' and reply.err
  if err and not string.find(err, 'equal or smaller', 1, true) then
    refused[1] = err
    refused[#refused + 1] = i
  end
  if expire == '1' then
    redis.call('EXPIRE', key, ttl)
  end
end
return refused
"""
"""One entry for each of several streams, in one call: the arguments are, per
key, the entry id (an id not above the stream's last is refused, quietly: a
duplicate write), the frames, a MINID to trim to (or none: MAXLEN) and
whether to set the stream's expiry. Returns the last refusal's message ('':
none) and the 1-based positions of the keys whose entry Redis refused (out
of memory, say)."""
APPEND_SHA: Final = hashlib.sha1(APPEND.encode()).hexdigest()
COALESCE: Final = 0.005
"""Seconds frames wait to be stored together (one XADD per generation per batch)."""
MAX_ENTRIES: Final = 100_000
"""MAXLEN of a generation's stream (entries are batches, so frames are more)."""
TIMEOUT: Final = 1.0
"""Seconds any Redis command may take before the store counts as down."""
PROBE: Final = 1.0
"""Seconds between attempts to reach Redis while it is down."""
LISTEN_RETRY: Final = 0.05
"""Seconds before the cancel listener's first reconnection attempt (then
doubling up to ``PROBE``): a killed connection is replaced at once."""

encode_frames = msgspec.msgpack.Encoder()
decode_packed = msgspec.msgpack.Decoder(str | list[str | GenerationFrame])
decode_request = msgspec.msgpack.Decoder(Generate)
encode_json = msgspec.json.Encoder()
decode_json = msgspec.json.Decoder(list[dict[str, Any]])
GENERATION_FRAMES: Final = get_args(GenerationFrame)


@dataclass(slots=True)
class Started:
    """A marker in a session's queue: generation ``request`` started here."""

    request: Generate


class StreamEntries:
    """The entries of one generation's stream, as its node wrote them: their
    bytes are bounded by ``resume_generation_bytes``, the oldest trimmed first."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, int]] = deque()  # (last seq, bytes)
        self.size = 0

    def add(self, last_seq: int, size: int, limit: int) -> str | None:
        """Count an entry; the MINID to trim the stream to, when past ``limit``."""
        self.entries.append((last_seq, size))
        self.size += size
        trimmed = False
        while self.size > limit and len(self.entries) > 1:
            _, dropped = self.entries.popleft()
            self.size -= dropped
            trimmed = True
        return entry_id(self.entries[0][0]) if trimmed else None


def session_key(h: str) -> str:
    return f"tw:{{{h}}}:s"


def conversations_key(h: str) -> str:
    return f"tw:{{{h}}}:c"


def stream_key(h: str, gid: str) -> str:
    return f"tw:{{{h}}}:g:{gid}"


def lease_key(h: str, gid: str) -> str:
    return f"tw:{{{h}}}:l:{gid}"


def cancel_key(h: str, gid: str) -> str:
    return f"tw:{{{h}}}:x:{gid}"


def watch_key(h: str, gid: str) -> str:
    return f"tw:{{{h}}}:w:{gid}"


def chat_key(name: str) -> str:
    """A UI chat's resumable answer (``RedisChats``)."""
    return f"tw:ui:{name}"


def probe_key(node: str) -> str:
    """A node's write probe while Redis refuses writes (expires by itself)."""
    return f"tw:node:{node}:probe"


def channel(node: str) -> str:
    return f"tw:node:{node}"


def response_key(response_id: str) -> str:
    """A response kept for ``previous_response_id`` (``RedisResponses``)."""
    return f"tw:r:{response_id}"


def entry_id(last_seq: int) -> str:
    return f"0-{last_seq + 1}"


def decode_record(
    raw: Mapping[bytes, bytes], conversations: Mapping[bytes, bytes]
) -> Record | None:
    if not raw:
        return None
    fields = {k.decode(): v for k, v in raw.items()}
    record = Record(
        key_hash=fields.get("key", b"").decode(),
        session_id=fields.get("id", b"").decode(),
        deadline=float(fields.get("deadline", b"0") or 0),
        conversations={
            name.decode(): decode_json.decode(value) for name, value in conversations.items()
        },
    )
    for name, value in fields.items():
        if name.startswith("g:"):
            record.owners[name[2:]] = value.decode()
        elif name.startswith("r:"):
            record.requests[name[2:]] = decode_request.decode(value)
        elif name.startswith("lost:"):
            with contextlib.suppress(ValueError):
                record.lost[name[5:]] = Cause(value.decode())
    return record


def generation_ids(items: Iterable[object]) -> list[str]:
    return list({gid: None for item in items if (gid := getattr(item, "id", None))})


def pack_frames(frames: Sequence[GenerationFrame]) -> bytes:
    """A stream entry's frames (one generation's, the entry's id naming the
    last one's seq), compact: a ``token`` numbered one before the frame after
    it (or, last, the entry's) as its bare text; any other frame whole; a
    lone token as its text alone. A paced token is an entry of its own:
    whole, its id, seq and field names would cost more than its text."""
    items: list[str | GenerationFrame] = []
    expected = seq_of(frames[-1])
    for frame in reversed(frames):
        items.append(frame.text if type(frame) is Token and frame.seq == expected else frame)
        expected = seq_of(frame) - 1
    items.reverse()
    return encode_frames.encode(items[0] if len(items) == 1 and type(items[0]) is str else items)


def unpack_frames(gid: str, entry: bytes, data: bytes) -> list[GenerationFrame]:
    """The frames ``pack_frames`` packed in the entry ``entry`` (its id) of
    generation ``gid``'s stream."""
    packed = decode_packed.decode(data)
    items = [packed] if isinstance(packed, str) else packed
    expected = int(entry.rpartition(b"-")[2]) - 1  # entry_id: the last seq + 1
    frames: list[GenerationFrame] = []
    for item in reversed(items):
        frames.append(Token(id=gid, seq=expected, text=item) if isinstance(item, str) else item)
        expected = seq_of(frames[-1]) - 1
    frames.reverse()
    return frames


def frames_after(
    gid: str, entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]], after_seq: int
) -> Replay:
    """The stored frames of ``gid`` after ``after_seq`` (``unknown``: no entry
    at all). The caller checks that they follow on (``resume.contiguous``):
    the oldest may have been trimmed."""
    frames: list[GenerationFrame] = []
    for entry, fields in entries:
        frames.extend(f for f in unpack_frames(gid, entry, fields[b"f"]) if seq_of(f) > after_seq)
    return frames if entries else "unknown"


def orphan_error(gid: str, seq: int) -> Error:
    """The terminal frame of a generation whose node stopped mid-answer."""
    return error_frame(
        gid,
        ErrorCode.UPSTREAM_ERROR,
        "the node streaming this generation stopped; retry it",
        seq=seq,
    )


def safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


DROP_CHAT: Final = """
-- KEYS[1]: a chat's answer (a MessagePack array: token, gid, message id);
-- ARGV[1]: a gid. Deletes the answer if it is still that generation's.
local kept = redis.call('GET', KEYS[1])
if kept and cmsgpack.unpack(kept)[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
CHAIN: Final = """
local out = {}
local id = ARGV[1]
for i = 1, tonumber(ARGV[2]) do
  local v = redis.call('GET', 'tw:r:' .. id)
  if not v then return false end
  out[#out + 1] = v
  local prev = cmsgpack.unpack(v)[2]
  if type(prev) ~= 'string' then return out end
  id = prev
end
return out
"""
"""Reads a chain of kept responses, newest first, in one round trip (false: one is missing)."""
