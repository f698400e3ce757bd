"""Listings authz answers itself, filtered to the caller's effective set, in the upstream's
shape, from what discovery last read on the backends: ``/api/tags``, ``/v1/models[/{model}]``
and ``/api/ps``. (``/api/show`` goes to a backend hosting the model, through Envoy.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from authz.models import canonical


def tags(entries: dict[str, dict[str, Any]], effective: frozenset[str]) -> dict[str, Any]:
    return {"models": [entry for name, entry in entries.items() if name in effective]}


def _created(entry: dict[str, Any]) -> int:
    text = entry.get("modified_at")
    if isinstance(text, str):
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return 0


def openai_model(shown: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``/v1/models`` item: id (the name as asked for), object, created, owned_by."""
    path = canonical(shown).rsplit(":", 1)[0]
    owner = path.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in path else "library"
    return {"id": shown, "object": "model", "created": _created(entry), "owned_by": owner}


def openai_models(entries: dict[str, dict[str, Any]], effective: frozenset[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            openai_model(str(e.get("model") or e.get("name") or n), e)
            for n, e in entries.items()
            if n in effective
        ],
    }


# The fields of Ollama's ``ProcessModelResponse`` (api/types.go): nothing else is passed on.
PS_FIELDS = (
    "name",
    "model",
    "size",
    "digest",
    "details",
    "expires_at",
    "size_vram",
    "context_length",
)


def ps_entry(entry: dict[str, Any], effective: frozenset[str]) -> dict[str, Any] | None:
    """A running model as the caller may see it: every name it carries (``model`` and
    ``name``) in the caller's effective set, only Ollama's documented fields; else None."""
    names = [entry.get(field) for field in ("model", "name") if entry.get(field) is not None]
    if not names or not all(isinstance(n, str) and canonical(n) in effective for n in names):
        return None
    return {field: entry[field] for field in PS_FIELDS if field in entry}


def ps(running: list[dict[str, Any]], effective: frozenset[str]) -> dict[str, Any]:
    """Running models on every live backend (discovery reads them), only those in the
    effective set."""
    shown = (ps_entry(entry, effective) for entry in running)
    return {"models": [entry for entry in shown if entry is not None]}
