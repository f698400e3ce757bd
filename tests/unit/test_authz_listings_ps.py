"""``/api/ps`` as authz answers it from what discovery read: only the caller's models, only
Ollama's fields (issue 11 §11)."""

from __future__ import annotations

from typing import Any

from authz import listings

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


def test_ps_shows_only_the_callers_models_and_ollamas_fields() -> None:
    running: list[dict[str, Any]] = [
        {**MINE, "loaded_for": "tenant-b", "runner_pid": 4242},  # fields Ollama may add later
        {**MINE, "name": "secret-finetune:latest"},  # one name allowed, the other not
        {"name": "other:latest", "model": "other:latest", "size": 1},
        {"size": 5},  # no name at all
    ]
    shown = listings.ps(running, frozenset({"llama3.2:latest"}))
    assert shown == {"models": [MINE]}
    assert "secret-finetune" not in str(shown)
    assert "tenant-b" not in str(shown)
