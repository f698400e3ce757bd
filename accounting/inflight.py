"""Requests whose observed streams are open in this accounting process — kept in Redis too, so
that whoever outlives a crash settles the ones it left behind.

Envoy does not wait for accounting (ext_proc observability mode): if accounting dies, a stream
it was watching still reaches its client, and nobody is left to count it. Every
:data:`SNAPSHOT_S` the set of open requests is written to ``nz:accounting:inflight:<instance>``
(a hash, request id → what authz decided and when the stream began), and the instance says it
is alive: its score in the sorted set ``nz:accounting:instances`` is the time of its last
snapshot (one key for all: a sweep is one read, whatever the number of pods; the replicas'
clocks must agree to well within :data:`ADOPT_AFTER_S`, as NTP keeps them).

A snapshot is *taken* — read and deleted in one step (``lua/take.lua``), so exactly one taker
gets it — by:

* the next accounting of the same instance (the pod's name, ``NZ_INSTANCE``), at its start:
  each request is settled from its reservation (charged what authz reserved for it, the upper
  bound of what it could use, marked estimated) and its slot given back; the audit row comes
  from Envoy's access-log entry, which the same pod's Envoy sends to it;
* or, when the instance has not said it is alive for :data:`ADOPT_AFTER_S` (its pod is gone:
  another replica, a rescheduled pod with a new name), any other accounting sharing the Redis
  (:func:`adopt`): it settles them the same way and writes their audit rows itself, since the
  dead pod's Envoy will send no access-log entry.

No slot or reservation waits for its lease because an accounting died, and no stream that
reached a model is left without its ledger and audit rows.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from accounting.stream import Outcome, RequestInfo
from accounting.tally import Counts
from gateway import budgets
from gateway.requestmeta import RateOverride
from gateway.storage import Store

SNAPSHOT_S = 0.5
KEY_TTL_S = 86400
# An instance silent this long is dead: another accounting takes its snapshot. Long against
# SNAPSHOT_S (a missed heartbeat or two is no death), short against the leases' 15 s.
ADOPT_AFTER_S = 5.0
REGISTRY = "nz:accounting:instances"
RESTARTED = "accounting restarted mid-stream"
ADOPTED = "accounting stopped mid-stream; settled by another replica"
_TAKE = budgets.lua("take.lua", package="accounting")
_STARTED = "_t"  # the entry's field for when the stream began (epoch seconds)


def instance_name(setting: str, worker_index: int = -1) -> str:
    """This accounting's instance: the setting, else the host's name (a pod's name); a
    worker's (gateway/workers.py) is its own within it."""
    name = setting or socket.gethostname()
    return name if worker_index < 0 else f"{name}-w{worker_index}"


def key(instance: str) -> str:
    return f"nz:accounting:inflight:{instance}"


@dataclass(frozen=True, slots=True)
class Open:
    """A request in a snapshot: what authz decided, and when its stream began."""

    info: RequestInfo
    started: float  # epoch seconds


def encode(entry: Open) -> str:
    return json.dumps({**asdict(entry.info), _STARTED: entry.started}, separators=(",", ":"))


def decode(text: str) -> Open | None:
    """What :func:`encode` wrote; None when it is not one."""
    try:
        values: dict[str, Any] = json.loads(text)
        started = values.pop(_STARTED, None)
        overrides = values.pop("rl", None) or []
        info = RequestInfo(**values, rl=tuple(RateOverride(**o) for o in overrides))
    except (ValueError, TypeError, AttributeError):
        return None
    return Open(info, float(started) if isinstance(started, int | float) else time.time())


def orphan_outcome(info: RequestInfo, error: str = RESTARTED) -> Outcome:
    """An open stream whose accounting died: charged what authz reserved for it (the prompt's
    estimate plus the output cap), or the cap when no budget reserved anything."""
    tokens_in = info.prompt_estimate
    tokens_out = max(0, info.reserved - tokens_in) if info.reserved else info.max_tokens
    counts = Counts(tokens_in, tokens_out, estimated=True, error=error, final=False)
    return Outcome(info=info, counts=counts, status=200, cut=True)


async def take(redis: Store, instance: str) -> list[Open]:
    """The snapshot ``instance`` left, removed from Redis (atomically: one taker gets it)."""
    flat = await redis.eval(_TAKE, 1, key(instance))
    found = (decode(str(text)) for text in flat[1::2])
    return [entry for entry in found if entry is not None]


async def adopt(redis: Store, own: str) -> dict[str, list[Open]]:
    """Take the snapshot of every other instance that has stopped saying it is alive, by
    instance (only those that left one)."""
    taken: dict[str, list[Open]] = {}
    silent = await redis.zrangebyscore(REGISTRY, "-inf", time.time() - ADOPT_AFTER_S)
    for instance in sorted(str(name) for name in silent):
        if instance == own:
            continue
        entries = await take(redis, instance)
        # Listed again by its next snapshot if it comes back.
        await redis.zrem(REGISTRY, instance)
        if entries:
            taken[instance] = entries
    return taken


class InFlight:
    """The open requests of this process, and their copy in Redis (written every
    :data:`SNAPSHOT_S` by :meth:`snapshot`, changes only)."""

    def __init__(self, redis: Store, instance: str) -> None:
        self._redis = redis
        self.instance = instance
        self._key = key(instance)
        self.open: dict[str, RequestInfo] = {}
        self._added: dict[str, Open] = {}
        self._removed: set[str] = set()

    def add(self, info: RequestInfo) -> None:
        if info.tenant_id and info.request_id:
            self.open[info.request_id] = info
            self._added[info.request_id] = Open(info, time.time())

    def remove(self, info: RequestInfo) -> None:
        if self.open.pop(info.request_id, None) is None:
            return
        if self._added.pop(info.request_id, None) is None:
            self._removed.add(info.request_id)  # already in Redis

    async def snapshot(self) -> None:
        """Say this instance is alive, and write what changed since the last snapshot (raises
        on a Redis error; the changes are kept for the next one)."""
        # Taken before the write: a request that ends meanwhile is removed by the next one.
        added, self._added = self._added, {}
        removed, self._removed = self._removed, set()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(REGISTRY, {self.instance: time.time()})
                if added:
                    pipe.hset(self._key, mapping={rid: encode(o) for rid, o in added.items()})
                if removed:
                    pipe.hdel(self._key, *removed)
                if added or removed:
                    pipe.expire(self._key, KEY_TTL_S)
                await pipe.execute()
        except BaseException:
            for rid, entry in added.items():
                if rid in self.open:
                    self._added[rid] = entry
                else:
                    self._removed.add(rid)  # ended meanwhile: it may have been written
            self._removed |= removed
            raise

    async def orphans(self) -> list[Outcome]:
        """The requests an earlier accounting of this instance left open (taken once, at
        start): each as the outcome it is settled with."""
        return [orphan_outcome(entry.info) for entry in await take(self._redis, self.instance)]
