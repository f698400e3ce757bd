"""``/api/ps`` as authz answers it, against a real HTTP backend (a tiny aiohttp app): only the
caller's models, only Ollama's fields (issue 11 §11)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from authz import listings
from tests.unit.backend import serve_models

MINE = {
    "name": "llama3.2:latest",
    "model": "llama3.2:latest",
    "size": 2_000,
    "digest": "abc",
    "details": {"family": "llama"},
    "expires_at": "2026-12-01T10:00:00Z",
    "size_vram": 2_000,
    "context_length": 4096,
}


@pytest.mark.asyncio
async def test_ps_shows_only_the_callers_models_and_ollamas_fields() -> None:
    running: list[dict[str, Any]] = [
        {**MINE, "loaded_for": "tenant-b", "runner_pid": 4242},  # fields Ollama may add later
        {**MINE, "name": "secret-finetune:latest"},  # one name allowed, the other not
        {"name": "other:latest", "model": "other:latest", "size": 1},
        {"size": 5},  # no name at all
    ]
    runner, url = await serve_models("/api/ps", running)
    try:
        async with aiohttp.ClientSession() as session:
            shown = await listings.ps(session, [url], frozenset({"llama3.2:latest"}))
    finally:
        await runner.cleanup()
    assert shown == {"models": [MINE]}
    assert "secret-finetune" not in str(shown)
    assert "tenant-b" not in str(shown)
