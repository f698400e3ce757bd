"""Probing the Ollama backends for the admin API: reachable, version, model count, latency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class BackendProbe:
    url: str
    reachable: bool
    version: str = ""
    model_count: int = 0
    latency_s: float = 0.0
    error: str = ""


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"{url.rsplit('/', 2)[-2:]} answered HTTP {response.status}")
        return await response.json(content_type=None)


async def probe(url: str, timeout_s: float) -> BackendProbe:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            version = await _get_json(session, f"{url}/api/version")
            tags = await _get_json(session, f"{url}/api/tags")
    except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as exc:
        message = str(exc) or exc.__class__.__name__
        return BackendProbe(url, False, latency_s=time.monotonic() - started, error=message)
    models = tags.get("models") if isinstance(tags, dict) else None
    return BackendProbe(
        url,
        True,
        version=str(version.get("version", "")) if isinstance(version, dict) else "",
        model_count=len(models) if isinstance(models, list) else 0,
        latency_s=time.monotonic() - started,
    )


async def probe_all(urls: Sequence[str], timeout_s: float) -> list[BackendProbe]:
    return list(await asyncio.gather(*(probe(u, timeout_s) for u in urls)))
