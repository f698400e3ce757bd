"""Discovery against a real HTTP backend (a tiny aiohttp app): lists expire, fail closed."""

from __future__ import annotations

import asyncio

import pytest

from authz.discovery import Discovery
from gateway.storage import redis_client
from tests.unit.backend import serve_models


@pytest.mark.asyncio
async def test_lists_expire_when_the_backend_is_gone_and_nothing_resolves() -> None:
    runner, url = await serve_models(
        "/api/tags", [{"name": "llama3:latest", "model": "llama3:latest"}]
    )
    # No Redis here: an unreachable one must not keep a list alive.
    redis = redis_client("redis://127.0.0.1:1/0", 0.1)
    discovery = Discovery([url], redis, interval_s=0.1, ttl_s=0.3)
    try:
        await discovery.refresh()
        assert discovery.models() == {"llama3:latest"}
        assert discovery.snapshot() == {url: frozenset({"llama3:latest"})}
        assert discovery.backends_for("llama3:latest") == [url]
        await runner.cleanup()
        await discovery.refresh()  # fails: the old list lives on until its TTL
        assert discovery.models() == {"llama3:latest"}
        await asyncio.sleep(0.35)
        await discovery.refresh()
        assert discovery.models() == frozenset()
        assert discovery.snapshot() == {}
    finally:
        await discovery.close()
        await redis.aclose()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_names_are_canonical_and_garbage_is_skipped() -> None:
    runner, url = await serve_models(
        "/api/tags",
        [{"name": "Llama3"}, {"model": "qwen:0.5b"}, {"nothing": 1}, "junk"],  # type: ignore[list-item]
    )
    redis = redis_client("redis://127.0.0.1:1/0", 0.1)
    discovery = Discovery([url], redis, interval_s=1, ttl_s=10)
    try:
        await discovery.refresh()
        assert discovery.models() == {"llama3:latest", "qwen:0.5b"}
    finally:
        await discovery.close()
        await redis.aclose()
        await runner.cleanup()
