"""The tests' own Redis clients of a stack's Redis: one server's, or a Redis Cluster's when the
stack runs on one (``NZ_TEST_REDIS=cluster``, ``StackConfig.redis_cluster``). Every test that
reads or writes the stack's Redis directly gets its client here."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from devstack.stack import Stack

SyncRedis = redis.Redis | RedisCluster
AsyncRedis = aioredis.Redis | AsyncRedisCluster


def sync_client(stack: Stack, **options: Any) -> SyncRedis:
    """A blocking client (``decode_responses`` on unless ``options`` say otherwise)."""
    options.setdefault("decode_responses", True)
    if not stack.config.redis_cluster:
        return redis.Redis.from_url(stack.redis_url, **options)
    seeds = [urlsplit(u) for u in stack.redis_url.split(",")]
    nodes = [ClusterNode(s.hostname or "127.0.0.1", s.port or 6379) for s in seeds]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **options)


def async_client(stack: Stack, **options: Any) -> AsyncRedis:
    """An asyncio client (``decode_responses`` on unless ``options`` say otherwise)."""
    options.setdefault("decode_responses", True)
    if not stack.config.redis_cluster:
        return aioredis.Redis.from_url(stack.redis_url, **options)
    seeds = [urlsplit(u) for u in stack.redis_url.split(",")]
    nodes = [AsyncClusterNode(s.hostname or "127.0.0.1", s.port or 6379) for s in seeds]
    return AsyncRedisCluster(startup_nodes=nodes, require_full_coverage=False, **options)


def kill_subscribers(client: SyncRedis) -> int:
    """Cut every pub/sub connection (on every node of a cluster); how many were cut."""
    if isinstance(client, RedisCluster):
        cut: Any = client.client_kill_filter(_type="pubsub", target_nodes=RedisCluster.ALL_NODES)
        return sum([int(n) for n in cut.values()])
    return int(client.client_kill_filter(_type="pubsub"))


def subscribers(client: SyncRedis, channel: str) -> int:
    """How many connections subscribe to ``channel`` (a cluster's nodes each count their own
    subscribers: summed)."""
    if isinstance(client, RedisCluster):
        nodes: list[Any] = client.get_nodes()  # type: ignore[no-untyped-call]
        return sum(
            [
                int(dict(client.pubsub_numsub(channel, target_nodes=node)).get(channel, 0))
                for node in nodes
            ]
        )
    return int(dict(client.pubsub_numsub(channel)).get(channel, 0))
