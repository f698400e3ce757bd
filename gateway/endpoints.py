"""The endpoint allowlist: which paths a key may call, under which scope.

An allowlist, not a blocklist: model management, blobs, account and cloud endpoints and every
path Ollama adds in future are absent, so they get the generic 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    MODELS = "models"


class Kind(StrEnum):
    INFERENCE = "inference"  # has a model in the body; counted and rate limited
    LISTING = "listing"  # answered by authz from the discovery cache
    SHOW = "show"  # model detail, forwarded for the model in the body
    VERSION = "version"


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    scope: Scope
    kind: Kind


_TABLE = [
    Endpoint("POST", "/api/chat", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/api/generate", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/api/embed", Scope.EMBEDDINGS, Kind.INFERENCE),
    Endpoint("POST", "/api/embeddings", Scope.EMBEDDINGS, Kind.INFERENCE),
    Endpoint("GET", "/api/tags", Scope.MODELS, Kind.LISTING),
    Endpoint("POST", "/api/show", Scope.MODELS, Kind.SHOW),
    Endpoint("GET", "/api/ps", Scope.MODELS, Kind.LISTING),
    Endpoint("GET", "/api/version", Scope.MODELS, Kind.VERSION),
    Endpoint("POST", "/v1/chat/completions", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/v1/completions", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/v1/responses", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/v1/messages", Scope.CHAT, Kind.INFERENCE),
    Endpoint("POST", "/v1/embeddings", Scope.EMBEDDINGS, Kind.INFERENCE),
    Endpoint("GET", "/v1/models", Scope.MODELS, Kind.LISTING),
]
ENDPOINTS: dict[tuple[str, str], Endpoint] = {(e.method, e.path): e for e in _TABLE}
MODEL_DETAIL = Endpoint("GET", "/v1/models/{model}", Scope.MODELS, Kind.LISTING)


def lookup(method: str, path: str) -> Endpoint | None:
    """The allowlisted endpoint for a request, or None (→ the generic 403)."""
    found = ENDPOINTS.get((method, path))
    if found is not None:
        return found
    if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return MODEL_DETAIL
    return None
