"""Sliding windows in Redis: one Lua round trip per decision (see ``window.lua``).

On one Redis server a decision is one atomic script call, whatever its windows. On a Redis
Cluster a script may only touch keys of one hash slot, so the windows are grouped by hash tag
and each group is one atomic call; the gateway's own descriptors all carry the tenant id, so a
request's key and tenant windows still share one slot and one call. (A decision that also
touches a window of another slot — a static global limit — is then atomic per slot only: a
request refused in one slot may have been counted in another.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib.resources import files

from redis.asyncio.cluster import RedisCluster

from gateway import scriptmetrics
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS, StoreUnavailable

_SCRIPT = (files("ratelimit") / "window.lua").read_text(encoding="utf-8")
_WINDOW_SECONDS = scriptmetrics.Timer("window")  # one call per hash slot of a decision

# Milliseconds since the epoch; None: the Redis server's clock (one clock for every replica).
Clock = Callable[[], int] | None


class Mode(StrEnum):
    CHECK = "c"  # room for one more unit? records nothing
    ADMIT = "a"  # records its hits only when the whole decision is admitted
    DEBIT = "d"  # records its hits unconditionally (tokens already spent)


@dataclass(frozen=True, slots=True)
class Hit:
    key: str  # the Redis key, with its hash tag
    limit: int
    period_ms: int
    hits: int
    mode: Mode
    enforce: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    over: bool
    before: float  # units in the window before this decision
    after: float  # units in the window after it
    now_ms: int


def hash_tag(key: str) -> str:
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


@lru_cache(maxsize=4096)
def _script_args(
    limit: int, period_ms: int, hits: int, mode: Mode, enforce: bool
) -> tuple[bytes, ...]:
    """A hit's ARGV of ``window.lua``, encoded once per distinct hit (the client sends bytes
    as they are)."""
    values = (limit, period_ms, hits, mode.value, 1 if enforce else 0)
    return tuple(str(v).encode() for v in values)


class Windows:
    def __init__(self, redis: Store, deadline_s: float, clock: Clock = None) -> None:
        self._script = redis.register_script(_SCRIPT)
        self._per_slot = isinstance(redis, RedisCluster)
        self._deadline = deadline_s
        self._clock = clock

    async def apply(self, hits: Sequence[Hit]) -> tuple[bool, list[Outcome]]:
        """Decide ``hits`` atomically per hash slot; (rejected, one outcome per hit)."""
        if not hits:
            return False, []
        if self._per_slot:
            groups: dict[str, list[int]] = {}
            for index, hit in enumerate(hits):
                groups.setdefault(hash_tag(hit.key), []).append(index)
            batches = list(groups.values())
        else:
            batches = [list(range(len(hits)))]
        try:
            async with asyncio.timeout(self._deadline):
                if len(batches) == 1:  # one server, or one hash slot: one call, no gather
                    answers = [await self._run(list(hits))]
                else:
                    answers = await asyncio.gather(
                        *(self._run([hits[i] for i in idx]) for idx in batches)
                    )
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        outcomes: list[Outcome | None] = [None] * len(hits)
        rejected = False
        for idx, (group_rejected, group_outcomes) in zip(batches, answers, strict=True):
            rejected = rejected or group_rejected
            for i, outcome in zip(idx, group_outcomes, strict=True):
                outcomes[i] = outcome
        return rejected, [o for o in outcomes if o is not None]

    async def _run(self, hits: list[Hit]) -> tuple[bool, list[Outcome]]:
        args: list[str | bytes] = ["" if self._clock is None else str(self._clock())]
        for hit in hits:
            args += _script_args(hit.limit, hit.period_ms, hit.hits, hit.mode, hit.enforce)
        keys = [h.key for h in hits]
        # (A stale pooled connection after a Redis restart is retried once by the client,
        # see gateway.storage.redis_client; Redis down for real fails, and closed.)
        reply = await _WINDOW_SECONDS.run(self._script(keys=keys, args=args))
        now_ms = int(float(reply[1]))
        outcomes = [
            Outcome(
                over=int(reply[2 + 3 * i]) == 1,
                before=float(reply[3 + 3 * i]),
                after=float(reply[4 + 3 * i]),
                now_ms=now_ms,
            )
            for i in range(len(hits))
        ]
        return int(reply[0]) == 1, outcomes
