"""The rate-limit decision in plain typed Python: descriptors → windows → statuses and headers.

How hits count (the one place this rule lives):

* a descriptor with its own ``hits_addend`` of 0 is a **check**: over when its window has no
  room for one more unit; it records nothing (the tokens/min check at request time);
* a descriptor with its own ``hits_addend`` of N > 0 is a **debit**: N is recorded whatever
  the window says (tokens already spent, sent by Envoy after the stream);
* any other descriptor is an **admission** of the request-level ``hits_addend`` (0 counts as
  1): recorded only when every enforced window of the decision has room, so a rejected
  request consumes nothing and N racing requests against a limit L admit exactly L.

The limit is the descriptor's override when Envoy sends one, else the static config's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import get_args
from urllib.parse import quote

from gateway import ratelimitreplies
from gateway.rls import Descriptor, Entry, Limit, RateLimitRequest, Status
from ratelimit.config import Match, Quota, StaticConfig
from ratelimit.windows import Hit, Mode, Windows

# Descriptor entries with a meaning for the RLS beyond counting (see docs/RATE_LIMITS.md).
TENANT_ID_ENTRY = "tenant_id"  # the Redis Cluster hash tag of the descriptor's window
TENANT_ENTRY = "tenant"  # the tenant label of metrics
SURFACE_ENTRY = "surface"  # "openai": OpenAI's headers and error body; else Ollama's
_EPS = 1e-6
# Distinct descriptors whose window key is remembered (a key's and its tenant's windows; a
# debit's differ only in hits, which the key does not depend on).
_KEYS_CACHED = 16_384


@dataclass(frozen=True, slots=True)
class Decision:
    over: bool
    statuses: list[Status]
    tenant: str = ""
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def outcome(self) -> str:
        """The metric's outcome: over_limit, shadow_over_limit, near_limit or ok."""
        if self.over:
            return "over_limit"
        if any(s.shadow_over for s in self.statuses):
            return "shadow_over_limit"
        if any(s.near for s in self.statuses):
            return "near_limit"
        return "ok"


def window_key(domain: str, descriptor: Descriptor) -> str:
    """The Redis key of a descriptor's window: ``nz:{<tenant_id>}:rl:<domain>:<entries>``.

    Windows of one tenant share its hash tag; descriptors without a tenant use the domain.
    Worked out once per distinct (domain, entries): the same keys come back on every request.
    """
    return _window_key(domain, descriptor.entries)


@lru_cache(maxsize=_KEYS_CACHED)
def _window_key(domain: str, entries: tuple[Entry, ...]) -> str:
    tag = Descriptor(entries).value(TENANT_ID_ENTRY) or domain
    text = "|".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in entries)
    return f"nz:{{{tag}}}:rl:{quote(domain, safe='')}:{text}"


def _hit(request: RateLimitRequest, descriptor: Descriptor, limit: Limit, shadow: bool) -> Hit:
    if descriptor.hits_addend is not None:
        hits = descriptor.hits_addend
        mode = Mode.CHECK if hits == 0 else Mode.DEBIT
    else:
        hits = request.hits_addend or 1
        mode = Mode.ADMIT
    return Hit(
        key=window_key(request.domain, descriptor),
        limit=limit.requests_per_unit,
        period_ms=limit.period_ms,
        hits=hits,
        mode=mode,
        enforce=not shadow,
    )


def _ms(units: float, limit: Limit) -> int:
    if limit.requests_per_unit <= 0:
        return limit.period_ms
    return max(0, math.ceil(units * limit.period_ms / limit.requests_per_unit - _EPS))


# The status of a descriptor without a limit, per quota (statuses are immutable: shared).
_UNLIMITED: dict[str | None, Status] = {
    quota: Status(over=False, quota=quota) for quota in (None, *get_args(Quota))
}


class Decider:
    def __init__(self, static: StaticConfig, windows: Windows, near_ratio: float = 0.8) -> None:
        self._static = static
        self._windows = windows
        self._near = near_ratio

    async def decide(self, request: RateLimitRequest) -> Decision:
        """Raises ``StoreUnavailable`` when Redis cannot answer: the caller fails closed."""
        statuses: list[Status] = []
        hits: list[Hit] = []
        limited: list[tuple[int, Limit, Match]] = []  # per hit: descriptor index, limit, match
        for index, descriptor in enumerate(request.descriptors):
            match = self._static.match(request.domain, descriptor.entries)
            statuses.append(_UNLIMITED[match.quota])
            limit = descriptor.limit or match.limit
            if limit is None:
                continue
            hits.append(_hit(request, descriptor, limit, match.shadow_mode))
            limited.append((index, limit, match))
        rejected, outcomes = await self._windows.apply(hits)

        for (index, limit, match), hit, outcome in zip(limited, hits, outcomes, strict=True):
            need = 1 if hit.mode is Mode.CHECK else hit.hits
            retry = 0
            if outcome.over:
                retry = (
                    limit.period_ms
                    if need > limit.requests_per_unit
                    else _ms(outcome.before + need - limit.requests_per_unit, limit)
                )
            statuses[index] = Status(
                over=outcome.over and hit.enforce,
                limit=limit,
                remaining=max(0, math.floor(limit.requests_per_unit - outcome.after + _EPS)),
                reset_ms=_ms(outcome.after, limit),
                retry_ms=max(retry, 1) if outcome.over else 0,
                shadow_over=outcome.over and not hit.enforce,
                near=outcome.after >= self._near * limit.requests_per_unit,
                quota=match.quota,
            )

        surface = _entry(request, SURFACE_ENTRY) or ""
        headers = ratelimitreplies.headers(statuses, surface, rejected)
        return Decision(
            over=rejected,
            statuses=statuses,
            tenant=tenant_of(request),
            response_headers=headers,
            body=ratelimitreplies.body(surface) if rejected else b"",
        )


def tenant_of(request: RateLimitRequest) -> str:
    """The tenant label of the request's metrics ("" when no descriptor names one)."""
    return _entry(request, TENANT_ENTRY) or ""


def _entry(request: RateLimitRequest, key: str) -> str | None:
    for descriptor in request.descriptors:
        value = descriptor.value(key)
        if value is not None:
            return value
    return None
