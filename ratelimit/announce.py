"""Throttle announcements: the RLS tells every authz replica which key or tenant it refused.

When a decision is over a key's or a tenant's requests/min or tokens/min (the limits authz
sends as overrides), the RLS publishes on the Redis channel ``CHANNEL`` who is throttled,
under which limit and for how long, with the statuses of that decision. authz keeps them in
memory (:mod:`authz.throttle`) and refuses the key's next requests itself, before reading
their bodies, until the window has room again. The RLS stays the one owner of the windows:
an announcement only repeats what it decided, and every request authz lets through is still
decided here. Publishing never delays or changes a decision; a failed publish is counted and
forgotten (authz then simply does not know, and the RLS keeps refusing).

The message and its schema are :mod:`gateway.throttlemap`'s (the contract authz reads).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.rls import RateLimitRequest
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS
from gateway.throttlemap import (
    CHANNEL,
    KEY_ID_ENTRY,
    KEY_LIMITS,
    LIMIT_ENTRY,
    TENANT_LIMITS,
    VERSION,
    subject,
)
from ratelimit import metrics
from ratelimit.decide import TENANT_ID_ENTRY, Decision

# One announcement per window and limit per this long at most: replicas that missed one (a
# reconnect, a new replica) learn it again while the RLS keeps refusing.
REPEAT_S = 1.0
_MAX_REMEMBERED = 10_000
_log = logs.get("ratelimit.announce")


@dataclass(frozen=True, slots=True)
class _Sent:
    at: float  # monotonic, when published
    until: float  # monotonic, the announced end of the throttle


def message(request: RateLimitRequest, decision: Decision, at_ms: int) -> dict[str, Any] | None:
    """The announcement of a refused decision; None when it refused nothing authz can act on."""
    if not decision.over:
        return None
    throttled: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    tenant_id = key_id = ""
    for descriptor, status in zip(request.descriptors, decision.statuses, strict=True):
        if status.limit is None:
            continue
        name = descriptor.value(LIMIT_ENTRY) or ""
        owner = descriptor.value(KEY_ID_ENTRY) or ""
        statuses.append(
            {
                "limit": name,
                "key_id": owner,
                "rpu": status.limit.requests_per_unit,
                "unit_s": status.limit.unit.seconds,
                "over": status.over,
                "remaining": status.remaining,
                "reset_ms": status.reset_ms,
                "retry_ms": status.retry_ms,
                "quota": status.quota,
            }
        )
        tenant = descriptor.value(TENANT_ID_ENTRY) or ""
        # Only authz's own limits (an override, on a descriptor naming its tenant and key):
        # a static limit from limits.yaml is the RLS's alone.
        if not status.over or descriptor.limit is None or not tenant:
            continue
        if name in KEY_LIMITS and owner:
            tenant_id, key_id = tenant, owner
        elif name in TENANT_LIMITS:
            tenant_id = tenant
        else:
            continue
        throttled.append(
            {"limit": name, "rpu": descriptor.limit.requests_per_unit, "retry_ms": status.retry_ms}
        )
    if not throttled:
        return None
    return {
        "v": VERSION,
        "at_ms": at_ms,
        "tenant_id": tenant_id,
        "key_id": key_id,
        "throttled": throttled,
        "statuses": statuses,
    }


class Announcer:
    """Publishes the announcements of refused decisions, in the background."""

    def __init__(
        self,
        redis: Store,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._timeout = timeout_s
        self._clock = clock
        self._sent: dict[tuple[str, str, int], _Sent] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def announce(self, request: RateLimitRequest, decision: Decision) -> None:
        """Never raises and never waits: the decision is answered whatever happens here."""
        found = message(request, decision, int(time.time() * 1000))
        if found is None:
            return
        now = self._clock()
        fresh = False
        for item in found["throttled"]:
            ident = (
                item["limit"],
                subject(item["limit"], found["tenant_id"], found["key_id"]),
                item["rpu"],
            )
            until = now + item["retry_ms"] / 1000
            last = self._sent.get(ident)
            if last is None or now - last.at >= REPEAT_S or until > last.until + REPEAT_S:
                fresh = True
                self._sent[ident] = _Sent(now, until)
        if not fresh:
            metrics.ANNOUNCEMENTS.labels("repeated").inc()
            return
        if len(self._sent) > _MAX_REMEMBERED:
            self._sent = {k: v for k, v in self._sent.items() if v.until > now}
        task = asyncio.ensure_future(self._publish(json.dumps(found, separators=(",", ":"))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, text: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.publish(CHANNEL, text)
        except REDIS_ERRORS as exc:
            metrics.ANNOUNCEMENTS.labels("failed").inc()
            _log.warning("throttle announcement not published", error=type(exc).__name__)
            return
        metrics.ANNOUNCEMENTS.labels("published").inc()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
