"""Keys the RLS is refusing, refused by authz before their bodies are read.

The RLS announces every refusal of a key's or a tenant's requests/min or tokens/min on the
Redis channel ``nz:throttled`` (the contract: :mod:`gateway.throttlemap`). Every authz replica
keeps what it heard in memory, window → until when, and :meth:`Throttles.refusal` answers the
key's next requests with the RLS's 429 (``Retry-After``, Envoy's ``X-RateLimit-*``, on ``/v1/*``
OpenAI's headers, the surface's body) right after the key and endpoint checks: no body
parsed, no budget, no Redis round trip beyond the deny-mode check every refusal makes.

authz only repeats what the RLS decided, never decides itself:

* an announcement is believed only while authz's own limit for that window is the one the
  RLS refused under (a limit raised or removed since is the RLS's to decide again);
* it ends :data:`SLACK_S` before the RLS said the window has room, so authz never refuses a
  request the RLS would admit (clock error and the announcement's delivery time included);
* without the subscription (Redis down, a dropped connection) the map is empty and every
  request goes to the RLS as before — authz refuses nothing it has not heard.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter

from authz.decision import Reply
from authz.principal import Principal
from gateway import logs, ratelimitreplies, throttlemap
from gateway.rls import Limit, Status, Unit

SLACK_S = 0.1  # authz stops refusing this long before the RLS's window has room
PING_S = 1.0  # liveness of the subscription
RETRY_S = 0.5
_MAX_ENTRIES = 100_000
_UNITS = {unit.seconds: unit for unit in Unit}
THROTTLED = Counter(
    "authz_throttled_total", "requests refused by authz as the RLS announced", ["tenant"]
)
_log = logs.get("authz.throttle")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """One limited status of the refused decision, as the RLS reported it."""

    name: str  # key_rpm, tenant_tpm, …; "" for a static limit
    key_id: str  # the key of a key_* window
    status: Status


@dataclass(frozen=True, slots=True)
class _Throttle:
    limit: int  # the limit the RLS refused under
    heard: float  # monotonic: when the statuses were true
    until: float  # monotonic: when the RLS admits the same request again
    statuses: tuple[_Snapshot, ...]


# The gateway's own windows, whose limits authz sends the RLS (``rl`` in its metadata).
WINDOWS = (*throttlemap.KEY_LIMITS, *throttlemap.TENANT_LIMITS)


def own_limit(principal: Principal, window: str) -> int | None:
    """The principal's limit for ``window`` (``key_rpm``, ``tenant_tpm``, …): the key's own
    (the tenant's when the key sets none) or the tenant's; None when there is none."""
    if window in throttlemap.KEY_LIMITS:
        return principal.limit(throttlemap.KEY_LIMITS[window])
    value: int | None = getattr(principal.tenant_limits, throttlemap.TENANT_LIMITS[window])
    return value


def _snapshot(raw: dict[str, Any]) -> _Snapshot:
    rpu, unit_s = int(raw["rpu"]), int(raw["unit_s"])
    quota = raw.get("quota")
    return _Snapshot(
        name=str(raw.get("limit") or ""),
        key_id=str(raw.get("key_id") or ""),
        status=Status(
            over=bool(raw["over"]),
            limit=Limit(rpu, _UNITS[unit_s]),
            remaining=int(raw["remaining"]),
            reset_ms=int(raw["reset_ms"]),
            retry_ms=int(raw["retry_ms"]),
            quota=str(quota) if quota in ("requests", "tokens") else None,
        ),
    )


def _aged(status: Status, elapsed_ms: int) -> Status:
    """The status ``elapsed_ms`` later: windows drain, nothing else counted in between."""
    assert status.limit is not None
    limit = status.limit
    reset = max(0, status.reset_ms - elapsed_ms)
    level = reset * limit.requests_per_unit / limit.period_ms
    remaining = max(status.remaining, math.floor(limit.requests_per_unit - level + 1e-6))
    retry = status.retry_ms - elapsed_ms
    return Status(
        over=status.over and retry > 0,
        limit=limit,
        remaining=min(limit.requests_per_unit, remaining),
        reset_ms=reset,
        retry_ms=max(retry, 1) if status.over and retry > 0 else 0,
        quota=status.quota,
    )


class Throttles:
    """What the RLS announced, window → throttle; read on every Check, written by :meth:`hear`."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._map: dict[tuple[str, str], _Throttle] = {}

    def __len__(self) -> int:
        return len(self._map)

    def clear(self) -> None:
        self._map.clear()

    def hear(self, text: str | bytes) -> None:
        """Take in one announcement; a malformed one is ignored (and logged)."""
        try:
            data = json.loads(text)
            if data.get("v") != throttlemap.VERSION:
                return
            tenant_id, key_id = str(data["tenant_id"]), str(data["key_id"])
            statuses = tuple(_snapshot(s) for s in data["statuses"])
            items = [
                (str(t["limit"]), int(t["rpu"]), int(t["retry_ms"])) for t in data["throttled"]
            ]
            at_ms = int(data["at_ms"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _log.warning("malformed throttle announcement ignored", error=type(exc).__name__)
            return
        now = self._clock()
        # Time since the RLS decided, by the wall clocks; never less than nothing.
        late_s = max(0.0, self._wall() - at_ms / 1000)
        if len(self._map) >= _MAX_ENTRIES:
            self._map = {k: v for k, v in self._map.items() if v.until - SLACK_S > now}
        for name, rpu, retry_ms in items:
            if name not in WINDOWS:
                continue
            until = now + retry_ms / 1000 - late_s
            ident = (name, throttlemap.subject(name, tenant_id, key_id))
            if not ident[1]:
                continue
            known = self._map.get(ident)
            if until - SLACK_S <= now or (known and known.limit == rpu and known.until > until):
                continue
            self._map[ident] = _Throttle(rpu, now - late_s, until, statuses)

    def refusal(self, principal: Principal, surface: str, metadata: dict[str, Any]) -> Reply | None:
        """The RLS's 429 for this key while an announcement covers it; None otherwise."""
        if not self._map:
            return None  # the usual case: one dict check
        now = self._clock()
        found: _Throttle | None = None
        for name in WINDOWS:
            ident = (name, throttlemap.subject(name, principal.tenant_id, principal.key_id))
            throttle = self._map.get(ident)
            if throttle is None:
                continue
            if throttle.until - SLACK_S <= now:
                del self._map[ident]
                continue
            if own_limit(principal, name) != throttle.limit:
                continue  # the limit changed since: the RLS decides
            if found is None or throttle.until > found.until:
                found = throttle
        if found is None:
            return None
        THROTTLED.labels(principal.tenant).inc()
        return self._reply(found, principal, surface, now, metadata)

    def _reply(
        self,
        throttle: _Throttle,
        principal: Principal,
        surface: str,
        now: float,
        metadata: dict[str, Any],
    ) -> Reply:
        elapsed_ms = int((now - throttle.heard) * 1000)
        statuses: list[Status] = []
        for snap in throttle.statuses:
            if snap.name in throttlemap.KEY_LIMITS and snap.key_id != principal.key_id:
                # Another key of the tenant was refused: of this key's window the
                # announcement knows only its limit.
                own = own_limit(principal, snap.name)
                if own is None:
                    continue
                limit = Limit(own, Unit.MINUTE)
                statuses.append(
                    Status(over=False, limit=limit, remaining=own, quota=snap.status.quota)
                )
                continue
            statuses.append(_aged(snap.status, elapsed_ms))
        # The same request fits again when the throttle ends, whatever the statuses say.
        retry_ms = max(1, math.ceil((throttle.until - now) * 1000))
        if not any(s.over for s in statuses):
            statuses.append(Status(over=True, retry_ms=retry_ms))
        headers = ratelimitreplies.headers(statuses, surface, rejected=True)
        headers.update(ratelimitreplies.envoy_headers(statuses))
        return Reply(
            status=429, body=ratelimitreplies.body(surface), headers=headers, metadata=metadata
        )


class Subscriber:
    """Listens on the RLS's channel; on any failure the map is emptied and it reconnects.

    On a Redis Cluster (``redis_url``: its seed URLs, comma separated) a message published on
    any node reaches every node's subscribers (the cluster bus carries it): one connection to
    one node is enough, and the next seed is tried when that node fails.
    """

    def __init__(self, redis_url: str, throttles: Throttles, connect_timeout_s: float) -> None:
        self._urls = [url.strip() for url in redis_url.split(",") if url.strip()]
        self._attempt = 0
        self._throttles = throttles
        self._timeout = connect_timeout_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            url = self._urls[self._attempt % len(self._urls)]
            self._attempt += 1
            client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=self._timeout,
                socket_timeout=None,  # a subscription waits for messages
                decode_responses=True,
                # RESP2: a PING while subscribed is answered as a "pong" message, which is
                # what the liveness check below hears. (Under RESP3, redis-py 8's default, the
                # answer never reaches get_message: a quiet channel looked dead and the
                # subscription, with everything heard, was dropped every 3.5 s.)
                protocol=2,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await pubsub.subscribe(throttlemap.CHANNEL)
                self.connected.set()
                heard = pinged = time.monotonic()
                while True:
                    msg = await pubsub.get_message(timeout=PING_S)
                    now = time.monotonic()
                    if msg is not None:
                        heard = now  # an announcement or the answer to a ping
                        if msg.get("type") == "message":
                            self._throttles.hear(msg["data"])
                    if now - heard > 3 * PING_S:
                        raise TimeoutError("no answer to pings")
                    if now - pinged >= PING_S:
                        await pubsub.ping()
                        pinged = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: forget everything, reconnect
                if self.connected.is_set():
                    _log.warning("throttle subscription lost", error=type(exc).__name__)
            finally:
                self.connected.clear()
                self._throttles.clear()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            await asyncio.sleep(RETRY_S)
