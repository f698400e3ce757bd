"""The endpoint table: every path a key may call, and what the gateway must know about each.

One row per endpoint, every consumer reads it: authz (scope, kind, which body field carries
the output cap, which header besides ``Authorization`` may carry the key, which listing it
answers), the body rewrite (which field it caps, which streams must ask for usage),
accounting (how a stream is framed, which frames it parses) and the audit log (known paths).

An allowlist, not a blocklist: model management, blobs, account and cloud endpoints and every
path Ollama adds in future are absent, so they get the generic 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote


class Scope(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    MODELS = "models"


class Kind(StrEnum):
    INFERENCE = "inference"  # has a model in the body; counted and rate limited
    LISTING = "listing"  # answered by authz from the discovery cache
    SHOW = "show"  # model detail, forwarded for the model in the body
    VERSION = "version"


class Listing(StrEnum):
    """What a :attr:`Kind.LISTING` endpoint answers (authz/listings.py builds each)."""

    TAGS = "tags"  # Ollama's /api/tags, from the discovery cache
    PS = "ps"  # Ollama's /api/ps, from what discovery last read on the backends
    MODELS = "models"  # OpenAI's /v1/models, from the discovery cache
    MODEL = "model"  # OpenAI's /v1/models/{model}: the one model the path names


class Surface(StrEnum):
    """The API family a path speaks: its error bodies, rate-limit headers and response frames.
    ``openai`` is Ollama's compatibility layer under ``/v1/`` (OpenAI's shapes, and Anthropic's
    on ``/v1/messages``); ``ollama`` its native ``/api/*``."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class Framing(StrEnum):
    """How a streamed answer is framed."""

    NDJSON = "ndjson"  # one JSON object a line (Ollama's native streams)
    SSE = "sse"  # server-sent events, ``data: {...}`` (OpenAI's and Anthropic's streams)


@dataclass(frozen=True, slots=True)
class OutputCap:
    """Where a request body carries the most tokens it may generate.

    ``field`` is the one the backend obeys: the gateway sets it whenever it caps. ``aliases``
    mean the same for the client's API and take precedence when the cap is read (OpenAI's
    ``max_completion_tokens`` supersedes its ``max_tokens``); the gateway rewrites those
    present to the same value, so the body is unambiguous. ``in_options``: a key of Ollama's
    ``options`` map (matched exactly, as Go matches map keys), not a top-level field.
    """

    field: str
    aliases: tuple[str, ...] = ()
    in_options: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field that carries the cap, in the order a request's cap is read."""
        return (*self.aliases, self.field)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    scope: Scope
    kind: Kind
    surface: Surface
    output_cap: OutputCap | None = None  # None: generates no tokens (embeddings, listings)
    framing: Framing | None = None  # how its stream is framed; None: never streams
    usage_opt_in: bool = False  # a stream carries token counts only when asked for them
    # (``stream_options.include_usage``): the gateway asks, and strips what the client did not
    listing: Listing | None = None  # what a LISTING endpoint answers
    # A header that carries the key bare, instead of ``Authorization: Bearer`` (Anthropic's
    # SDK sends ``x-api-key``); None: the bearer header only.
    key_header: str | None = None


_NUM_PREDICT = OutputCap("num_predict", in_options=True)
_MAX_TOKENS = OutputCap("max_tokens")
_CHAT_CAP = OutputCap("max_tokens", aliases=("max_completion_tokens",))
_MAX_OUTPUT_TOKENS = OutputCap("max_output_tokens")
_OLLAMA, _OPENAI = Surface.OLLAMA, Surface.OPENAI
_NDJSON, _SSE = Framing.NDJSON, Framing.SSE
_CHAT, _EMBED, _MODELS = Scope.CHAT, Scope.EMBEDDINGS, Scope.MODELS
_INFER, _LISTING = Kind.INFERENCE, Kind.LISTING

_TABLE = [
    Endpoint("POST", "/api/chat", _CHAT, _INFER, _OLLAMA, _NUM_PREDICT, _NDJSON),
    Endpoint("POST", "/api/generate", _CHAT, _INFER, _OLLAMA, _NUM_PREDICT, _NDJSON),
    Endpoint("POST", "/api/embed", _EMBED, _INFER, _OLLAMA),
    Endpoint("POST", "/api/embeddings", _EMBED, _INFER, _OLLAMA),
    Endpoint("GET", "/api/tags", _MODELS, _LISTING, _OLLAMA, listing=Listing.TAGS),
    Endpoint("POST", "/api/show", _MODELS, Kind.SHOW, _OLLAMA),
    Endpoint("GET", "/api/ps", _MODELS, _LISTING, _OLLAMA, listing=Listing.PS),
    Endpoint("GET", "/api/version", _MODELS, Kind.VERSION, _OLLAMA),
    Endpoint("POST", "/v1/chat/completions", _CHAT, _INFER, _OPENAI, _CHAT_CAP, _SSE, True),
    Endpoint("POST", "/v1/completions", _CHAT, _INFER, _OPENAI, _MAX_TOKENS, _SSE, True),
    Endpoint("POST", "/v1/responses", _CHAT, _INFER, _OPENAI, _MAX_OUTPUT_TOKENS, _SSE),
    Endpoint(
        *("POST", "/v1/messages", _CHAT, _INFER, _OPENAI, _MAX_TOKENS, _SSE),
        key_header="x-api-key",
    ),
    Endpoint("POST", "/v1/embeddings", _EMBED, _INFER, _OPENAI),
    Endpoint("GET", "/v1/models", _MODELS, _LISTING, _OPENAI, listing=Listing.MODELS),
]
ENDPOINTS: dict[tuple[str, str], Endpoint] = {(e.method, e.path): e for e in _TABLE}
_BY_PATH: dict[str, Endpoint] = {e.path: e for e in _TABLE}  # one method per path
_DETAIL_PREFIX = "/v1/models/"
MODEL_DETAIL = Endpoint(
    "GET", _DETAIL_PREFIX + "{model}", _MODELS, _LISTING, _OPENAI, listing=Listing.MODEL
)
# Every top-level body field that caps output on some endpoint (Ollama's ``num_predict`` is a
# key of ``options``): never prompt text (authz/payload.py).
OUTPUT_CAP_FIELDS = frozenset(
    name
    for e in _TABLE
    if e.output_cap is not None and not e.output_cap.in_options
    for name in e.output_cap.fields
)
# Every header that may carry a key: Envoy strips them all before the backend (authz/check.py).
KEY_HEADERS = ("authorization", *sorted({e.key_header for e in _TABLE if e.key_header}))
# The canonical model authz admitted, set on every request it lets through with a model and
# removed from every other: Envoy routes by it to the backends hosting that model
# (envoy.yaml's header_to_metadata → envoy.lb; authz/eds.py), and never forwards it.
MODEL_HEADER = "x-nz-model"


def lookup(method: str, path: str) -> Endpoint | None:
    """The allowlisted endpoint for a request, or None (→ the generic 403)."""
    found = ENDPOINTS.get((method, path))
    if found is not None:
        return found
    if method == "GET" and path.startswith(_DETAIL_PREFIX) and len(path) > len(_DETAIL_PREFIX):
        return MODEL_DETAIL
    return None


def model_in_path(path: str) -> str:
    """The model a :data:`MODEL_DETAIL` path names (``/v1/models/<name>``, percent-decoded)."""
    return unquote(path[len(_DETAIL_PREFIX) :])


def for_path(path: str) -> Endpoint | None:
    """The endpoint at a normalised ``path`` (what authz puts in its metadata), or None."""
    return _BY_PATH.get(path)


def surface(path: str) -> Surface:
    """The API family of any path: the table's for an endpoint, else by prefix (``/v1`` is
    OpenAI's), so a refused path still gets the error body of the API its client speaks."""
    found = _BY_PATH.get(path)
    if found is not None:
        return found.surface
    return _OPENAI if path == "/v1" or path.startswith("/v1/") else _OLLAMA
