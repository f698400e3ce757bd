"""authz's subscription to the RLS's announcements, against a real Redis: a quiet channel is not
a lost subscription. (With redis-py's RESP3 default the liveness PING's answer never reached
the subscriber: it dropped the subscription, and everything it had heard, every 3.5 s.)"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from authz import throttle
from authz.throttle import Subscriber, Throttles
from gateway.throttlemap import CHANNEL
from tests.unit.test_authz_throttle import principal

PING_S = 0.1  # the subscription's liveness period in this test (1 s in the service)


def _announcement() -> str:
    status = {
        "limit": "key_rpm",
        "key_id": "k1",
        "rpu": 1,
        "unit_s": 60,
        "over": True,
        "remaining": 0,
        "reset_ms": 60_000,
        "retry_ms": 60_000,
        "quota": "requests",
    }
    return json.dumps(
        {
            "v": 1,
            "at_ms": int(time.time() * 1000),
            "tenant_id": "t1",
            "key_id": "k1",
            "throttled": [{"limit": "key_rpm", "rpu": 1, "retry_ms": 60_000}],
            "statuses": [status],
        }
    )


async def test_a_quiet_subscription_stays_up_and_keeps_what_it_heard(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "PING_S", PING_S)
    heard = Throttles()
    subscriber = Subscriber(redis_url, heard, connect_timeout_s=0.5)
    task = asyncio.create_task(subscriber.run())
    publisher = aioredis.Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(2):
            await subscriber.connected.wait()
            while not len(heard):
                await publisher.publish(CHANNEL, _announcement())
                await asyncio.sleep(0.02)
        drops = 0
        deadline = time.monotonic() + 12 * PING_S  # four times the liveness limit, all quiet
        while time.monotonic() < deadline:
            drops += not subscriber.connected.is_set()
            await asyncio.sleep(PING_S / 4)
        assert drops == 0
        assert (
            heard.refusal(principal(key_rpm=1, tenant_rpm=None), "ollama", {}) is not None
        )  # still refused by authz
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
