"""Requests whose observed streams are open in this accounting process — kept in Redis too, so
that the next accounting of the same instance settles the ones a crash left behind.

Envoy does not wait for accounting (ext_proc observability mode): if accounting dies, a stream
it was watching still reaches its client, and nobody is left to count it. Every
:data:`SNAPSHOT_S` the set of open requests is written to ``nz:accounting:inflight:<instance>``
(a hash, request id → what authz decided). An accounting starting under the same instance
name (the pod's, ``NZ_INSTANCE``) reads it first: each request there is settled from its
reservation — charged what authz reserved for it, the upper bound of what it could use, marked
estimated — and its slot given back. No slot or reservation waits for its lease because
accounting was briefly down; no stream is left unaccounted.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis

from accounting.stream import Outcome, RequestInfo
from accounting.tally import Counts
from gateway.requestmeta import RateOverride

SNAPSHOT_S = 0.5
KEY_TTL_S = 86400
RESTARTED = "accounting restarted mid-stream"


def instance_name(setting: str, worker_index: int = -1) -> str:
    """This accounting's instance: the setting, else the host's name (a pod's name); a
    worker's (gateway/workers.py) is its own within it."""
    name = setting or socket.gethostname()
    return name if worker_index < 0 else f"{name}-w{worker_index}"


def key(instance: str) -> str:
    return f"nz:accounting:inflight:{instance}"


def encode(info: RequestInfo) -> str:
    return json.dumps(asdict(info), separators=(",", ":"))


def decode(text: str) -> RequestInfo | None:
    """What :func:`encode` wrote; None when it is not one."""
    try:
        values: dict[str, Any] = json.loads(text)
        overrides = values.pop("rl", None) or []
        return RequestInfo(**values, rl=tuple(RateOverride(**o) for o in overrides))
    except (ValueError, TypeError, AttributeError):
        return None


def orphan_outcome(info: RequestInfo) -> Outcome:
    """An open stream whose accounting died: charged what authz reserved for it (the prompt's
    estimate plus the output cap), or the cap when no budget reserved anything."""
    tokens_in = info.prompt_estimate
    tokens_out = max(0, info.reserved - tokens_in) if info.reserved else info.max_tokens
    counts = Counts(tokens_in, tokens_out, estimated=True, error=RESTARTED, final=False)
    return Outcome(info=info, counts=counts, status=200, cut=True)


class InFlight:
    """The open requests of this process, and their copy in Redis (written every
    :data:`SNAPSHOT_S` by :meth:`snapshot`, changes only)."""

    def __init__(self, redis: aioredis.Redis, instance: str) -> None:
        self._redis = redis
        self._key = key(instance)
        self.open: dict[str, RequestInfo] = {}
        self._added: dict[str, RequestInfo] = {}
        self._removed: set[str] = set()

    def add(self, info: RequestInfo) -> None:
        if info.tenant_id and info.request_id:
            self.open[info.request_id] = info
            self._added[info.request_id] = info

    def remove(self, info: RequestInfo) -> None:
        if self.open.pop(info.request_id, None) is None:
            return
        if self._added.pop(info.request_id, None) is None:
            self._removed.add(info.request_id)  # already in Redis

    async def snapshot(self) -> None:
        """Write what changed since the last snapshot (raises on a Redis error; the changes
        are kept for the next one)."""
        if not self._added and not self._removed:
            return
        # Taken before the write: a request that ends meanwhile is removed by the next one.
        added, self._added = self._added, {}
        removed, self._removed = self._removed, set()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if added:
                    pipe.hset(self._key, mapping={rid: encode(i) for rid, i in added.items()})
                if removed:
                    pipe.hdel(self._key, *removed)
                pipe.expire(self._key, KEY_TTL_S)
                await pipe.execute()
        except BaseException:
            for rid, info in added.items():
                if rid in self.open:
                    self._added[rid] = info
                else:
                    self._removed.add(rid)  # ended meanwhile: it may have been written
            self._removed |= removed
            raise

    async def orphans(self) -> list[Outcome]:
        """The requests an earlier accounting of this instance left open (read once, at
        start, and removed from Redis): each as the outcome it is settled with."""
        entries = await self._redis.hgetall(self._key)
        if entries:
            await self._redis.delete(self._key)
        found = (decode(str(text)) for text in entries.values())
        return [orphan_outcome(info) for info in found if info is not None]
