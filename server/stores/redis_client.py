"""``resume: redis``: how a node reaches Redis, one server or a Redis Cluster.

``redis_url`` names one server (``redis://``, ``rediss://``, ``unix://``) or
a Redis Cluster (``redis+cluster://host:port``, ``rediss+cluster://``: any
of its nodes; the client learns the rest and follows failovers and moved
slots). What differs between the two is here and nowhere else:

- the clients: a bounded pool of connections to the one server, or
  redis-py's ``RedisCluster`` (a pool per node, which cannot wait);
- how the frames of many sessions are stored in one round trip: one
  ``APPEND`` script call for all of them on one server, one per hash slot
  on a cluster (a script may only touch the keys of one slot; every key of a
  session shares its slot, ``tw:{h}:...``);
- the cancel channel: ``PUBLISH``/``SUBSCRIBE`` on one server, sharded
  ``SPUBLISH``/``SSUBSCRIBE`` on a cluster (a message goes to the channel's
  shard only, not to every node of the cluster).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

CLUSTER_SCHEMES: Final = ("redis+cluster://", "rediss+cluster://")
FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
"""What a Redis command raises when Redis (or a cluster's node) cannot be
reached or refuses: the store counts it, it never reaches a session."""
CONNECTIONS: Final = 64
"""Pooled connections to one server for storing and reading (each command
holds one for its round trip); past it a command waits up to the timeout."""
RELAY_CONNECTIONS: Final = 512
"""Pooled connections for relays (each blocks on its stream's next entry);
past it a relay waits its turn. On a cluster neither bound applies: redis-py's
cluster pools do not wait for a free connection, they raise at once (which
would read as Redis gone), so a cluster node gets a connection per command
or relay in flight to it, up to ``CLUSTER_CONNECTIONS``."""
CLUSTER_CONNECTIONS: Final = 10_000
"""Connections a client may open to one cluster node (Redis's own
``maxclients`` default)."""
CONNECT_TIMEOUT: Final = 1.0
"""Seconds a connection to Redis (or a cluster's node) may take to open."""
LISTEN_POLL: Final = 1.0
"""Seconds a cluster's sharded subscription waits for a message before
polling again (it follows a channel's shard across failovers meanwhile)."""


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def _plain(url: str) -> str:
    """A cluster URL as redis-py reads it (``redis://`` of a seed node)."""
    return url.replace("+cluster", "", 1) if is_cluster(url) else url


def connect(url: str, *, timeout: float | None, blocking_timeout: float | None, pool: int) -> Any:
    """A client for ``url``: a reply is awaited ``timeout`` seconds (None: as
    long as it takes, for a subscription); past ``pool`` connections a
    command waits ``blocking_timeout`` seconds for one (None: as long as it
    takes). On a cluster, ``CLUSTER_CONNECTIONS`` (see ``RELAY_CONNECTIONS``)."""
    if is_cluster(url):
        return RedisCluster.from_url(
            _plain(url),
            max_connections=CLUSTER_CONNECTIONS,
            socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
        )
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool,
            timeout=blocking_timeout,
            socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
        )
    )


async def disconnect(client: Any) -> None:
    await client.aclose()
    if not isinstance(client, RedisCluster):
        await client.connection_pool.disconnect()


def by_slot(keys: Sequence[str], cluster: bool) -> list[list[int]]:
    """The positions of ``keys`` in the groups one script call may store:
    all of them on one server; those of one hash slot on a cluster."""
    if not cluster:
        return [list(range(len(keys)))] if keys else []
    groups: dict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key_slot(key.encode())].append(i)
    return list(groups.values())


def publish(pipe: Any, cluster: bool, name: str, message: str) -> None:
    """Add a publish to ``name`` to ``pipe`` (sharded on a cluster)."""
    if cluster:
        pipe.execute_command("SPUBLISH", name, message)
    else:
        pipe.publish(name, message)


async def messages(url: str, name: str) -> AsyncIterator[bytes]:
    """An empty message once subscribed, then the messages published to
    channel ``name`` as they come; raises one of ``FAILURES`` when the
    subscription is lost (the caller subscribes again: what was published
    meanwhile is not delivered)."""
    client = connect(url, timeout=None, blocking_timeout=None, pool=4)
    try:
        if isinstance(client, RedisCluster):
            async with client.pubsub() as shard:
                await shard.ssubscribe(name)
                yield b""  # subscribed
                while True:
                    message = await shard.get_sharded_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_POLL
                    )
                    if message is not None and message.get("type") == "smessage":
                        yield message["data"]
        else:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(name)
                yield b""  # subscribed
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield message["data"]
    finally:
        await disconnect(client)
