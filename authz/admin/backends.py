"""The configured Ollama backends as the admin API shows them: found by name or URL, listed by
priority, probed (reachable, version, model count, latency).

A probe sends the backend's upstream headers: a hosted Ollama answers ``/api/tags`` only with
its credentials. Their values never reach a result, a log line or an error string: an error
that somehow quotes one has it masked before it leaves this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from authz.admin.errors import NotFound
from gateway.backends import Backend

_MASK = "**********"  # how pydantic's SecretStr prints


@dataclass(frozen=True, slots=True)
class BackendProbe:
    name: str
    url: str
    priority: int
    reachable: bool
    version: str = ""
    model_count: int = 0
    latency_s: float = 0.0
    error: str = ""


def in_order(configured: Sequence[Backend]) -> list[Backend]:
    """By priority, then in configuration order (the order requests try them in)."""
    return sorted(configured, key=lambda b: b.priority)  # sorted() is stable


def find(configured: Sequence[Backend], ref: str) -> Backend:
    """The backend named ``ref``, or whose URL it is (a trailing ``/`` is ignored)."""
    wanted = ref.strip()
    for backend in configured:
        if wanted in (backend.name, backend.url) or wanted.rstrip("/") == backend.url:
            return backend
    raise NotFound(f"no backend {ref!r}")


def _masked(text: str, backend: Backend) -> str:
    for value in backend.upstream_headers().values():
        text = text.replace(value, _MASK)
    return text


async def _get_json(session: aiohttp.ClientSession, backend: Backend, path: str) -> Any:
    async with session.get(backend.url + path, headers=backend.upstream_headers()) as response:
        if response.status != 200:
            raise RuntimeError(f"{path} answered HTTP {response.status}")
        return await response.json(content_type=None)


async def probe(backend: Backend, timeout_s: float) -> BackendProbe:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            version = await _get_json(session, backend, "/api/version")
            tags = await _get_json(session, backend, "/api/tags")
    except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as exc:
        message = _masked(str(exc) or exc.__class__.__name__, backend)
        return BackendProbe(
            backend.name,
            backend.url,
            backend.priority,
            False,
            latency_s=time.monotonic() - started,
            error=message,
        )
    models = tags.get("models") if isinstance(tags, dict) else None
    return BackendProbe(
        backend.name,
        backend.url,
        backend.priority,
        True,
        version=_masked(str(version.get("version", "")), backend)
        if isinstance(version, dict)
        else "",
        model_count=len(models) if isinstance(models, list) else 0,
        latency_s=time.monotonic() - started,
    )


async def probe_all(configured: Sequence[Backend], timeout_s: float) -> list[BackendProbe]:
    """Every backend at once, reported by priority then configuration order."""
    return list(await asyncio.gather(*(probe(b, timeout_s) for b in in_order(configured))))
