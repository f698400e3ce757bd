"""Connections to PostgreSQL (asyncpg pool) and Redis (asyncio client: one server, or a Redis
Cluster)."""

from __future__ import annotations

from typing import Any, Literal, overload
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from gateway import poolmetrics
from gateway.settings import Settings

# Pooled Redis connections per client (one client per service process).
MAX_CONNECTIONS = 64
# On a Redis Cluster: connections per node. redis-py's cluster client does not wait for a free
# one (past the bound a command fails: 503), so the bound is wider than one server's pool.
CLUSTER_MAX_CONNECTIONS_PER_NODE = 256

# A service's Redis handle: one server, or a Redis Cluster (NZ_REDIS_CLUSTER). The keys a Lua
# script call touches share one hash tag, so the same code runs on both.
Store = aioredis.Redis | RedisCluster


class _PooledConnection(asyncpg.Connection):
    """A connection to a transaction pooler: nothing to reset when the pool takes it back.
    asyncpg's reset (``pg_advisory_unlock_all()``, ``UNLISTEN *``, ``RESET ALL``) would run on
    whichever server connection PgBouncer picks, one more round trip that could drop another
    client's session state; nothing of ours keeps session state on a pooled connection."""

    def get_reset_query(self) -> str:
        return ""


async def pg_pool(cfg: Settings, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """The service's pool on ``NZ_DATABASE_URL``, as ``NZ_DATABASE_POOLER`` needs it (behind
    a transaction pooler: no statement cache, no reset query). Sessions of our own (LISTEN,
    advisory locks) use ``cfg.direct_database_url`` instead, never this pool."""
    pooled = cfg.database_pooler == "transaction"
    pool = await asyncpg.create_pool(
        cfg.database_url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=5,
        timeout=5,
        statement_cache_size=cfg.statement_cache_size,
        connection_class=_PooledConnection if pooled else asyncpg.Connection,
    )
    assert pool is not None
    poolmetrics.watch_pg(pool)
    return pool


@overload
def redis_client(url: str, timeout_s: float) -> aioredis.Redis: ...
@overload
def redis_client(url: str, timeout_s: float, cluster: Literal[False]) -> aioredis.Redis: ...
@overload
def redis_client(url: str, timeout_s: float, cluster: Literal[True]) -> RedisCluster: ...
@overload
def redis_client(url: str, timeout_s: float, cluster: bool) -> Store: ...


def redis_client(url: str, timeout_s: float, cluster: bool = False) -> Store:
    """A pooled client with short timeouts (a slow Redis fails closed, fast).

    More commands at once than :data:`MAX_CONNECTIONS` wait for a pooled connection, at most
    ``timeout_s``, instead of failing at once ("Too many connections": at c=64 the RLS's two
    calls per request outnumber the pool, and requests were refused with a 503).

    A pooled connection left over from before a Redis restart fails once: the command is tried
    again at once on a fresh connection. Redis really down still fails fast (refused).

    ``cluster``: ``url`` names a Redis Cluster (:func:`cluster_client`).
    """
    if cluster:
        return cluster_client(url, timeout_s)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_s,  # the longest wait for a free connection
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        health_check_interval=0,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    client = aioredis.Redis.from_pool(pool)
    poolmetrics.watch_redis(client)
    return client


def cluster_client(urls: str, timeout_s: float) -> RedisCluster:
    """A Redis Cluster client from its seed URLs (comma separated; credentials and TLS from
    the first), with the same short timeouts as one server's client.

    A command on a slot whose master is down fails at once (refused) or within ``timeout_s``;
    an error makes the client read the slot map again before its next command, so once a
    replica is promoted the slot is served again, without a restart. Nothing waits for a
    promotion: callers fail closed meanwhile, and commands on the other masters' slots go on.
    """
    seeds = [u.strip() for u in urls.split(",") if u.strip()]
    others = [urlsplit(u) for u in seeds[1:]]
    client = _Cluster.from_url(
        seeds[0],
        startup_nodes=[ClusterNode(p.hostname or "127.0.0.1", p.port or 6379) for p in others],
        # A slot nobody serves (its master just died) fails its own commands only.
        require_full_coverage=False,
        max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        health_check_interval=0,
        # No second try: the caller fails closed at once, and the client reads the slot map
        # again before its next command. (redis-py's cluster pipeline closes every
        # connection of the client before it tries again — other callers' commands in flight
        # on live masters included — and then sleeps 0.25 s.)
        retry=Retry(NoBackoff(), 0),
        # MOVED (a slot migrated): follow it and patch that slot. (Re-reading the whole map
        # also closes every connection of the client, in flight or not.)
        reinitialize_steps=0,
    )
    poolmetrics.watch_redis(client)
    return client


class _Cluster(RedisCluster):
    """redis-py's cluster client, with two changes for a client many callers share:

    * a pipeline that failed on a node (refused, timed out: a dead master) makes the client
      read the slot map again before its next command, as a single command's failure does
      (redis-py's pipeline did that only by closing every connection of the client, the
      other callers' in flight included, before trying again; it never tries again here);
    * the server's command table is read once (:class:`_CommandTableOnce`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTableOnce()

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


class _ClusterPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisCluster.ERRORS_ALLOW_RETRY:
            self.cluster_client._initialize = True  # the slot map is read again first
            raise


class _CommandTableOnce(AsyncCommandsParser):
    """The server's command table (``COMMAND``: where each command's keys are), read once.

    redis-py reads it again at every refresh of the slot map, from the default node: the
    first master of ``CLUSTER SLOTS``. With that master dead every refresh failed, and with it
    the command that asked for it — whatever its slot: a dead master's slots, and every
    other, failed until its replica was promoted. The table does not change with the
    topology; only the node asked for keys (``COMMAND GETKEYS``) follows the default node.
    """

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if self.commands:
            if node is not None:
                self.node = node
            return
        await super().initialize(node)


async def queue_script(
    pipe: Pipeline | ClusterPipeline,
    script: AsyncScript,
    keys: list[str],
    args: list[str | int | float],
) -> None:
    """Queue one call of a registered script in a non-transactional pipeline.

    One server: EVALSHA (the pipeline loads the script first when the server lacks it). A
    Redis Cluster's pipeline refuses EVALSHA (it could not load a missing script on the node
    of the keys' slot, a promoted replica's for one): EVAL, with the script's text.
    """
    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
    else:
        await script(keys=keys, args=args, client=pipe)
