"""``resume: redis``: what is kept in Redis beside sessions: the responses
a ``previous_response_id`` continues, and the UI chats' resumable answers."""

from __future__ import annotations

import msgspec

from .contract import MAX_CHAIN, ChatAnswer, KeptResponse
from .redis_keys import CHAIN, DROP_CHAT, chat_key, response_key
from .redis_link import RedisLink
from .resume import new_response_id


class RedisResponses:
    """Responses kept in Redis, ``response_ttl`` seconds each: ``tw:r:<id>``
    holds a response (MessagePack), and one script call reads a chain back
    (on a cluster, a response at a time)."""

    def __init__(self, store: RedisLink, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self._chain = store.client.register_script(CHAIN)

    def new_id(self) -> str:
        return new_response_id()

    async def put(self, response_id: str, kept: KeptResponse) -> None:
        await self.store.put_value(response_key(response_id), kept, self.ttl)

    async def get(self, response_id: str) -> KeptResponse | None:
        return await self.store.get_value(response_key(response_id), KeptResponse)

    async def chain(self, response_id: str) -> list[KeptResponse] | None:
        if self.store.cluster:  # a chain's responses are in slots of their own
            return await self._walk(response_id)
        found = await self.store.quietly(lambda: self._chain(args=[response_id, MAX_CHAIN]))
        if not found:
            return None
        return [msgspec.msgpack.decode(raw, type=KeptResponse) for raw in found]

    async def _walk(self, response_id: str) -> list[KeptResponse] | None:
        """The chain read a response at a time (a round trip each)."""
        chain: list[KeptResponse] = []
        found: str | None = response_id
        while found is not None and len(chain) < MAX_CHAIN:
            kept = await self.get(found)
            if kept is None:
                return None
            chain.append(kept)
            found = kept.previous
        return chain


class RedisChats:
    """The UI chats' resumable answers in Redis (``resume_ttl`` seconds each):
    ``tw:ui:<name>`` holds one (MessagePack), shared by every node."""

    def __init__(self, store: RedisLink, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self._drop = store.client.register_script(DROP_CHAT)

    async def put(self, name: str, answer: ChatAnswer) -> None:
        await self.store.put_value(chat_key(name), answer, self.ttl)

    async def get(self, name: str) -> ChatAnswer | None:
        return await self.store.get_value(chat_key(name), ChatAnswer)

    async def drop(self, name: str, gid: str) -> None:
        await self.store.quietly(lambda: self._drop(keys=[chat_key(name)], args=[gid]))
