"""Listings authz answers itself, filtered to the caller's effective set, in the upstream's
shape: ``/api/tags`` and ``/v1/models[/{model}]`` from the discovery cache; ``/api/show`` and
``/api/ps`` fetched from the backends, then stripped and filtered."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiohttp

from authz.models import canonical

# What /api/show must never reveal: the system prompt, the template and the whole Modelfile.
SHOW_SECRETS = ("system", "template", "modelfile", "messages")
_TIMEOUT = aiohttp.ClientTimeout(total=10)


class UpstreamError(Exception):
    """The backend could not answer (the caller answers 502)."""


class UnknownModel(Exception):
    """The backend does not have the model (the caller answers the generic 403)."""


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


def strip_show(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in SHOW_SECRETS}


async def show(
    session: aiohttp.ClientSession, backend: str, model: str, verbose: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if verbose:
        body["verbose"] = True
    try:
        async with session.post(f"{backend}/api/show", json=body, timeout=_TIMEOUT) as resp:
            if resp.status == 404:
                raise UnknownModel(model)
            if resp.status != 200:
                raise UpstreamError(resp.status)
            payload = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UpstreamError(str(exc)) from exc
    if not isinstance(payload, dict):
        raise UpstreamError("not an object")
    return strip_show(payload)


async def _ps_one(session: aiohttp.ClientSession, backend: str) -> list[dict[str, Any]] | None:
    try:
        async with session.get(f"{backend}/api/ps", timeout=_TIMEOUT) as resp:
            if resp.status != 200:
                return None
            payload = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    models = payload.get("models") if isinstance(payload, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else None


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


async def ps(
    session: aiohttp.ClientSession, backends: list[str], effective: frozenset[str]
) -> dict[str, Any]:
    """Running models on every backend, only those in the effective set."""
    answers = await asyncio.gather(*(_ps_one(session, url) for url in backends))
    if backends and all(a is None for a in answers):
        raise UpstreamError("no backend answered /api/ps")
    shown = (ps_entry(entry, effective) for answer in answers for entry in answer or [])
    return {"models": [entry for entry in shown if entry is not None]}
