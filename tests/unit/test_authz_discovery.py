"""Discovery against a real HTTP backend (a tiny aiohttp app): lists expire, fail closed."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from authz.discovery import Discovery
from gateway.backends import Backend
from gateway.storage import redis_client
from tests.unit.backend import serve_models


@pytest.mark.asyncio
async def test_lists_expire_when_the_backend_is_gone_and_nothing_resolves() -> None:
    runner, url = await serve_models(
        "/api/tags", [{"name": "llama3:latest", "model": "llama3:latest"}]
    )
    # No Redis here: an unreachable one must not keep a list alive.
    redis = redis_client("redis://127.0.0.1:1/0", 0.1)
    discovery = Discovery((Backend("b", url),), redis, interval_s=0.1, ttl_s=0.3)
    try:
        await discovery.refresh()
        assert discovery.models() == {"llama3:latest"}
        assert discovery.snapshot() == {url: frozenset({"llama3:latest"})}
        assert discovery.backends_for("llama3:latest") == [url]
        assert REGISTRY.get_sample_value("authz_backend_live", {"backend": "b"}) == 1
        await runner.cleanup()
        await discovery.refresh()  # fails: the old list lives on until its TTL
        assert discovery.models() == {"llama3:latest"}
        await asyncio.sleep(0.35)
        await discovery.refresh()
        assert discovery.models() == frozenset()
        assert discovery.snapshot() == {}
        assert REGISTRY.get_sample_value("authz_backend_live", {"backend": "b"}) == 0
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
    discovery = Discovery((Backend("b", url),), redis, interval_s=1, ttl_s=10)
    try:
        await discovery.refresh()
        assert discovery.models() == {"llama3:latest", "qwen:0.5b"}
    finally:
        await discovery.close()
        await redis.aclose()
        await runner.cleanup()


@pytest.mark.asyncio
async def test_running_models_are_read_with_the_lists_in_priority_order() -> None:
    """``/api/ps`` is read with each backend's list (authz answers it from here, never
    calling a backend inside a Check); a model running on two backends is listed once, as
    the higher-priority backend reports it; a backend without /api/ps contributes nothing."""
    tags = [{"name": "llama3:latest", "model": "llama3:latest"}]
    first, first_url = await serve_models(
        "/api/tags", tags, api_ps=[{"name": "llama3:latest", "model": "llama3:latest", "size": 1}]
    )
    second, second_url = await serve_models(
        "/api/tags",
        tags,
        api_ps=[
            {"name": "llama3:latest", "model": "llama3:latest", "size": 2},
            {"name": "qwen:0.5b", "model": "qwen:0.5b", "size": 3},
        ],
    )
    third, third_url = await serve_models("/api/tags", tags)  # no /api/ps: 404
    redis = redis_client("redis://127.0.0.1:1/0", 0.1)
    backends = (
        Backend("second", second_url, priority=1),
        Backend("third", third_url, priority=0),
        Backend("first", first_url, priority=0),
    )
    discovery = Discovery(backends, redis, interval_s=1, ttl_s=10)
    try:
        assert discovery.running() is None  # nothing read yet
        await discovery.refresh()
        assert discovery.running() == [
            {"name": "llama3:latest", "model": "llama3:latest", "size": 1},
            {"name": "qwen:0.5b", "model": "qwen:0.5b", "size": 3},
        ]
    finally:
        await discovery.close()
        await redis.aclose()
        for runner in (first, second, third):
            await runner.cleanup()
