"""A mock Ollama HTTP server: the model server of the tests and of the local dev stack.

It answers the Ollama native API (``/api/*``), the OpenAI-compatible API (``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/models``, ``/v1/responses``) and the
Anthropic-compatible ``/v1/messages`` with *honest* frames: the field names, key order, content
types, NDJSON/SSE framing and error bodies of Ollama 0.12+, and token counts that follow one fixed
rule, so a gateway's accounting can be checked exactly.

Counting rule
-------------
* Prompt tokens (``prompt_eval_count``, ``usage.prompt_tokens``, ``usage.input_tokens``): the
  number of whitespace-separated words across all message contents (``/api/chat``,
  ``/v1/chat/completions``, ``/v1/messages`` incl. ``system``, ``/v1/responses`` incl.
  ``instructions``), or across ``prompt`` + ``system`` (``/api/generate``, ``/v1/completions``);
  minimum 1.
* Output tokens (``eval_count``, ``usage.completion_tokens``, ``usage.output_tokens``):
  ``options.num_predict`` (native), ``max_tokens`` / ``max_completion_tokens`` (OpenAI chat),
  ``max_tokens`` (OpenAI completions, Anthropic), ``max_output_tokens`` (Responses) when it is an
  int >= 0, else 8.
* The output text is ``token0 token1 token2 ...``: one word per streamed content frame, so the
  number of words in the content always equals the output token count.
* Embeddings: ``prompt_eval_count`` / ``usage.prompt_tokens`` is the word count of all inputs.

Control knobs (in ``options`` of the request body; on ``/v1/*`` bodies a top-level ``options``
object is read too, a field real Ollama ignores there):

* ``mock_error_after`` (int n): stream n content frames (all of them if there are fewer), then an
  error frame instead of the done frame and end the stream, still HTTP 200: native
  ``{"error":"mock failure"}``, OpenAI ``data: {"error":{...}}``, Anthropic/Responses
  ``event: error``. Non-streaming requests answer HTTP 500 with the error body.
* ``mock_omit_counts`` (bool): the final frame lacks ``prompt_eval_count`` and ``eval_count`` (real
  Ollama omits them e.g. for a fully cached prompt); the OpenAI/Anthropic usage then reports 0,
  exactly as Ollama's compatibility layers do when the metrics are missing.
* ``mock_frame_delay_ms`` (int): pause between streamed frames (the default is the server's
  ``--frame-delay-s``), for tests that need a stream to be slow or cut mid-way. The request
  header ``x-mock-frame-delay-ms`` does the same where the body may carry no ``options`` (the
  gateway admits only the fields each endpoint documents); the body's knob wins.

Models: a fresh mock has ``llama3.2:latest``, ``qwen2.5:0.5b``, ``nomic-embed-text:latest``
(embeddings only) and ``gpt-oss:20b-cloud``, a cloud model (Ollama's ``-cloud`` tag): listed as
Ollama lists one (``remote_model``, ``remote_host``, a 384-byte stub), so a tenant's cloud
opt-in can be tested; the mock answers it locally like the others.

Introspection: ``GET /_mock/requests`` lists the last 200 requests received (method, path,
lower-case headers, parsed body, raw body), so tests can prove what reached the model server.

Ollama quirks kept on purpose
-----------------------------
* Counts are Go ``omitempty`` fields: a zero count is omitted (``num_predict: 0`` gives a final
  frame without ``eval_count``).
* ``/api/chat`` with no messages and ``/api/generate`` with an empty prompt only load the model:
  one JSON object with ``"done_reason":"load"`` and no counts.
* ``done_reason`` is ``"stop"`` (the mock's output always ends on its own).
* ``/v1/completions`` streaming with ``include_usage`` puts a zero ``usage`` on every chunk, then
  a usage chunk with ``"choices":[]``; ``/v1/chat/completions`` adds only the usage chunk.
* OpenAI-shape errors use ``invalid_request_error`` (400), ``not_found_error`` (404) and
  ``api_error`` (others), as ``openai.NewError`` does.
* Anthropic ``message_start`` has ``output_tokens: 0``; the final counts arrive in
  ``message_delta.usage`` (``input_tokens`` and ``output_tokens``).

Nothing here logs request headers or bodies; they are only kept in memory
(``MockOllama.requests``) for the tests to inspect.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import contextvars
import dataclasses
import hashlib
import json
import logging
import math
import random
import secrets
import signal
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "EMBEDDING_DIM",
    "MOCK_ERROR",
    "OLLAMA_VERSION",
    "MockOllama",
    "ModelInfo",
    "RecordedRequest",
    "bound_port",
    "create_app",
    "default_models",
    "main",
    "normalize_model_name",
    "start",
]

log = logging.getLogger("devstack.mock_ollama")

OLLAMA_VERSION: Final = "0.12.6"
DEFAULT_OUTPUT_TOKENS: Final = 8
EMBEDDING_DIM: Final = 8
MOCK_ERROR: Final = "mock failure"
REQUEST_HISTORY: Final = 200

_JSON_CT: Final = "application/json; charset=utf-8"
_NDJSON_CT: Final = "application/x-ndjson"
_SSE_CT: Final = "text/event-stream"
_MODIFIED_AT: Final = "2025-10-16T09:30:00Z"
_OPENAI_PATHS: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
)

JSONObj = dict[str, Any]


# --------------------------------------------------------------------------- state


@dataclass
class ModelInfo:
    """One installed model, as ``/api/tags``, ``/api/ps`` and ``/api/show`` describe it."""

    name: str
    size: int
    digest: str
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    context_length: int = 4096
    format: str = "gguf"
    modified_at: str = _MODIFIED_AT
    # A cloud model (``<name>:cloud`` / ``<name>:<tag>-cloud``) is a stub that forwards to Ollama's
    # cloud: Ollama lists it with these two fields, and a size of a few hundred bytes.
    remote_model: str = ""
    remote_host: str = ""

    def details(self) -> JSONObj:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    @classmethod
    def pulled(cls, name: str) -> ModelInfo:
        """A plausible model for a name pulled into the mock."""
        embed = "embed" in name.lower()
        return cls(
            name=name,
            size=274_302_450 if embed else 1_321_098_329,
            digest=hashlib.sha256(name.encode()).hexdigest(),
            family="bert" if embed else "llama",
            parameter_size="137M" if embed else "1.2B",
            quantization_level="F16" if embed else "Q4_K_M",
            capabilities=["embedding"] if embed else ["completion", "tools"],
            context_length=2048 if embed else 8192,
            modified_at=_rfc3339(),
        )


def default_models() -> dict[str, ModelInfo]:
    """The models a fresh mock has installed, keyed by their full ``name:tag``."""
    models = [
        ModelInfo(
            name="llama3.2:latest",
            size=2_019_393_189,
            digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            family="llama",
            parameter_size="3.2B",
            quantization_level="Q4_K_M",
            context_length=131_072,
        ),
        ModelInfo(
            name="qwen2.5:0.5b",
            size=397_821_319,
            digest="a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",
            family="qwen2",
            parameter_size="494.03M",
            quantization_level="Q4_K_M",
            context_length=32_768,
        ),
        ModelInfo(
            name="nomic-embed-text:latest",
            size=274_302_450,
            digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            capabilities=["embedding"],
            context_length=2048,
        ),
        ModelInfo(
            name="gpt-oss:20b-cloud",
            size=384,
            digest="875c3d0ee3b2ba9a7d3e4e5e2b8b0c6e2a4ad8f1a36f3b54d5b6b6e9b7d5c2a1",
            family="gptoss",
            parameter_size="20.9B",
            quantization_level="MXFP4",
            capabilities=["completion", "tools", "thinking"],
            context_length=131_072,
            format="",
            remote_model="gpt-oss:20b",
            remote_host="https://ollama.com:443",
        ),
    ]
    return {m.name: m for m in models}


def normalize_model_name(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; drops the default registry/namespace prefix."""
    n = name.strip()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if n.lower().startswith(prefix):
            n = n[len(prefix) :]
            break
    if ":" not in n.rsplit("/", 1)[-1]:
        n += ":latest"
    return n


@dataclass(frozen=True)
class RecordedRequest:
    """One request the mock received. ``headers`` keys are lowercase; ``body`` is the parsed JSON
    body, or None (no body, or not valid JSON); ``raw`` the body's bytes as UTF-8 text (tests
    decode it as Ollama's Go decoder would)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: str = ""


class MockOllama:
    """The mock's mutable state; tests change it directly (add models, slow frames down)."""

    def __init__(
        self, models: dict[str, ModelInfo] | None = None, frame_delay_s: float = 0.0
    ) -> None:
        self.models: dict[str, ModelInfo] = default_models() if models is None else models
        self.frame_delay_s: float = frame_delay_s
        self.requests: deque[RecordedRequest] = deque(maxlen=REQUEST_HISTORY)
        self.disconnects: int = 0  # streams the client abandoned before their last frame

    def resolve(self, name: str) -> ModelInfo | None:
        key = normalize_model_name(name)
        found = self.models.get(key)
        if found is None:
            lowered = key.lower()
            found = next((m for k, m in self.models.items() if k.lower() == lowered), None)
        return found

    def add_model(self, name: str) -> ModelInfo:
        """Install a model as ``/api/pull`` would (idempotent)."""
        existing = self.resolve(name)
        if existing is not None:
            return existing
        info = ModelInfo.pulled(normalize_model_name(name))
        self.models[info.name] = info
        return info

    def remove_model(self, name: str) -> bool:
        info = self.resolve(name)
        if info is None:
            return False
        del self.models[info.name]
        return True

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]


# --------------------------------------------------------------------------- helpers


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Body:
    value: Any = None
    error: str | None = None  # Go-style JSON decode error
    empty: bool = True


_BODY: contextvars.ContextVar[_Body | None] = contextvars.ContextVar(
    "mock_ollama_body", default=None
)
# The ``x-mock-frame-delay-ms`` header of the request being answered.
_DELAY_HEADER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mock_ollama_delay_header", default=None
)


def _rfc3339(ns: int | None = None) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339, nanoseconds with trailing zeros trimmed, UTC)."""
    ns = time.time_ns() if ns is None else ns
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if frac:
        base += f".{frac:09d}".rstrip("0")
    return base + "Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json(obj: Any, status: int = 200, newline: bool = False) -> web.Response:
    """gin's ``c.JSON`` (native API), or with ``newline`` the compatibility layers'
    ``json.NewEncoder`` (trailing newline, no charset)."""
    if newline:
        return web.Response(
            body=_dumps(obj) + b"\n", status=status, headers={"Content-Type": "application/json"}
        )
    return web.Response(body=_dumps(obj), status=status, headers={"Content-Type": _JSON_CT})


def _ndjson(obj: Any) -> bytes:
    return _dumps(obj) + b"\n"


def _sse(obj: Any, event: str | None = None, sort_keys: bool = False) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    return head + b"data: " + data.encode() + b"\n\n"


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _as_count(value: Any) -> int | None:
    """An int >= 0 (JSON numbers like 5.0 count), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _go_type_name(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "object"


# Go's encoding/json matches a key to a struct field case-insensitively (U+017F folds with s,
# U+212A with k) and the last match wins. Every field name of Ollama's request structs is
# lower-case ASCII, so a key names the field its lower-cased, unfolded spelling names. Maps
# (``options``) and raw JSON (``format``, tool schemas) keep their keys exactly.
_GO_FOLD = str.maketrans({"\u017f": "s", "\u212a": "k"})
_EXACT_KEYS = frozenset({"options", "format", "tools", "parameters", "properties", "metadata"})


def _as_go_reads(value: Any) -> Any:
    """A request body with its struct keys spelled as Ollama's Go decoder matches them."""
    if isinstance(value, list):
        return [_as_go_reads(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = key.translate(_GO_FOLD).lower()
        out.pop(name, None)  # the last match wins
        out[name] = item if name in _EXACT_KEYS else _as_go_reads(item)
    return out


def _go_json_error(raw: bytes, exc: ValueError) -> str:
    """Approximate Go's ``encoding/json`` syntax errors (``invalid character 'x' ...``)."""
    if not isinstance(exc, json.JSONDecodeError):
        return "invalid character looking for beginning of value"
    doc, pos = exc.doc, exc.pos
    if pos >= len(doc.rstrip()):
        return "unexpected EOF"
    char = doc[pos]
    if exc.msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif exc.msg.startswith("Expecting ':'"):
        where = "after object key"
    elif exc.msg.startswith("Expecting ','"):
        where = "after object key:value pair" if "{" in doc[:pos] else "after array element"
    elif exc.msg.startswith("Extra data"):
        where = "after top-level value"
    else:
        where = "looking for beginning of value"
    return f"invalid character {char!r} {where}"


def _embedding(text: str, dim: int, normalize: bool) -> list[float]:
    """A deterministic pseudo-embedding of ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for i in range(0, 32, 4):
            values.append(int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0)
        counter += 1
    values = values[:dim]
    if normalize:
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        values = [v / norm for v in values]
    return [round(v, 7) for v in values]


def _options(body: JSONObj) -> JSONObj:
    opts = body.get("options")
    return opts if isinstance(opts, dict) else {}


def _error_after(opts: JSONObj) -> int | None:
    return _as_count(opts.get("mock_error_after"))


@dataclass
class _Plan:
    """What one generation request produces."""

    prompt_tokens: int
    pieces: list[str]
    error_after: int | None
    omit_counts: bool
    started_ns: int = field(default_factory=time.perf_counter_ns)
    delay_s: float = 0.0

    @classmethod
    def build(cls, prompt_words: int, n_out: Any, opts: JSONObj, delay_s: float) -> _Plan:
        count = _as_count(n_out)
        n = DEFAULT_OUTPUT_TOKENS if count is None else count
        pieces = [f"token{i}" if i == 0 else f" token{i}" for i in range(n)]
        return cls(
            prompt_tokens=max(1, prompt_words),
            pieces=pieces,
            error_after=_error_after(opts),
            omit_counts=opts.get("mock_omit_counts") is True,
            delay_s=max(0.0, delay_s),
        )

    @property
    def eval_count(self) -> int:
        return len(self.pieces)

    @property
    def frames(self) -> list[str]:
        """The content pieces actually streamed (fewer when an error cuts the stream)."""
        if self.error_after is None:
            return self.pieces
        return self.pieces[: self.error_after]

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> tuple[int, int]:
        """(prompt, output) as the compatibility layers see them: 0 when Ollama omits them."""
        if self.omit_counts:
            return 0, 0
        return self.prompt_tokens, self.eval_count

    def metrics(self) -> JSONObj:
        """The timing and count fields of a final frame, in Ollama's order, zeros omitted."""
        load = 2_345_678
        prompt_eval = 150_000 * self.prompt_tokens + 1_000_000
        eval_ = 1_000_000 * self.eval_count + int(self.delay_s * 1e9) * self.eval_count
        total = max(load + prompt_eval + eval_ + 500_000, time.perf_counter_ns() - self.started_ns)
        out: JSONObj = {"total_duration": total, "load_duration": load}
        if not self.omit_counts:
            out["prompt_eval_count"] = self.prompt_tokens
        out["prompt_eval_duration"] = prompt_eval
        if not self.omit_counts and self.eval_count:
            out["eval_count"] = self.eval_count
        if eval_:
            out["eval_duration"] = eval_
        return out

    def context(self) -> list[int]:
        return [(i * 7919 + 128_000) % 128_256 for i in range(self.prompt_tokens + self.eval_count)]


@dataclass
class _Renderer:
    """How one API family turns a plan into stream bytes."""

    content_type: str
    token: Callable[[int, str], bytes]
    done: Callable[[], bytes]
    error: Callable[[], bytes]
    head: Callable[[], bytes] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


def _message_words(messages: list[Any]) -> int:
    """Words across chat messages whose content is a string or a list of text parts."""
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += _words(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    total += _words(part.get("text"))
    return total


def _new_id(prefix: str, limit: int) -> str:
    return f"{prefix}{random.randrange(limit)}"


# --------------------------------------------------------------------------- handlers


class _Handlers:
    def __init__(self, state: MockOllama) -> None:
        self.state = state

    # ---- plumbing

    @staticmethod
    def body(go_type: str, empty_message: str = "missing request body") -> JSONObj:
        b = _BODY.get() or _Body()
        if b.error is not None:
            raise _ApiError(400, b.error)
        if b.empty:
            raise _ApiError(400, empty_message)
        if not isinstance(b.value, dict):
            kind = _go_type_name(b.value)
            raise _ApiError(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
        return b.value

    def model(self, body: JSONObj) -> tuple[str, ModelInfo]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            name = body.get("name")  # the deprecated field name
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "model is required")
        info = self.state.resolve(name)
        if info is None:
            raise _ApiError(404, f"model {json.dumps(name)} not found, try pulling it first")
        return name, info

    async def pump(self, request: web.Request, plan: _Plan, r: _Renderer) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": r.content_type, **r.extra_headers})
        await resp.prepare(request)
        delay = plan.delay_s
        try:
            if r.head is not None:
                await resp.write(r.head())
            for i, piece in enumerate(plan.frames):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(r.token(i, piece))
            if plan.frames and delay > 0:
                await asyncio.sleep(delay)
            await resp.write(r.error() if plan.error_after is not None else r.done())
            await resp.write_eof()
        except ConnectionResetError:
            self.state.disconnects += 1
        except asyncio.CancelledError:
            self.state.disconnects += 1
            raise
        return resp

    def plan(self, prompt_words: int, n_out: Any, opts: JSONObj) -> _Plan:
        delay_ms = _as_count(opts.get("mock_frame_delay_ms"))
        header = _DELAY_HEADER.get()
        if delay_ms is None and header is not None and header.isdigit():
            delay_ms = int(header)
        delay = self.state.frame_delay_s if delay_ms is None else delay_ms / 1000
        return _Plan.build(prompt_words, n_out, opts, delay)

    # ---- native: meta

    async def recorded(self, request: web.Request) -> web.StreamResponse:
        return _json([dataclasses.asdict(r) for r in self.state.requests])

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def version(self, request: web.Request) -> web.StreamResponse:
        return _json({"version": OLLAMA_VERSION})

    def _tag(self, m: ModelInfo) -> JSONObj:
        remote = {"remote_model": m.remote_model, "remote_host": m.remote_host}
        return {
            "name": m.name,
            "model": m.name,
            **(remote if m.remote_model else {}),
            "modified_at": m.modified_at,
            "size": m.size,
            "digest": m.digest,
            "details": m.details(),
        }

    async def tags(self, request: web.Request) -> web.StreamResponse:
        return _json({"models": [self._tag(m) for m in self.state.models.values()]})

    async def ps(self, request: web.Request) -> web.StreamResponse:
        expires = _rfc3339(time.time_ns() + 300 * 1_000_000_000)
        models = [
            {
                "name": m.name,
                "model": m.name,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
                "expires_at": expires,
                "size_vram": m.size,
                "context_length": m.context_length,
            }
            for m in self.state.models.values()
        ]
        return _json({"models": models})

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.ShowRequest")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "model is required")
        m = self.state.resolve(name)
        if m is None:
            raise _ApiError(404, f"model '{name}' not found")
        return _json(self._show(m))

    @staticmethod
    def _show(m: ModelInfo) -> JSONObj:
        template = (
            "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
            "{{ end }}{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        system = "You are a helpful assistant. Internal mock system prompt: do not reveal."
        parameters = (
            'stop                           "<|start_header_id|>"\n'
            'stop                           "<|end_header_id|>"\n'
            'stop                           "<|eot_id|>"'
        )
        blob = f"/root/.ollama/models/blobs/sha256-{m.digest}"
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {m.name}\n\n"
            f"FROM {blob}\n"
            f'TEMPLATE """{template}"""\n'
            f'SYSTEM """{system}"""\n'
            "PARAMETER stop <|start_header_id|>\n"
            "PARAMETER stop <|end_header_id|>\n"
            "PARAMETER stop <|eot_id|>\n"
            'LICENSE """MOCK MODEL LICENSE AGREEMENT"""\n'
        )
        arch = m.family.replace("-", "_")
        return {
            "license": "MOCK MODEL LICENSE AGREEMENT",
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "system": system,
            "details": m.details(),
            "model_info": {
                "general.architecture": arch,
                "general.basename": m.name.split(":", 1)[0],
                "general.file_type": 15,
                "general.parameter_count": m.size // 2,
                "general.quantization_version": 2,
                f"{arch}.context_length": m.context_length,
                f"{arch}.embedding_length": 3072,
                f"{arch}.block_count": 28,
                "tokenizer.ggml.model": "gpt2",
            },
            "capabilities": list(m.capabilities),
            "modified_at": m.modified_at,
        }

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.PullRequest")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _ApiError(400, "invalid model name")
        info = self.state.add_model(name)
        if body.get("stream") is False:
            return _json({"status": "success"})
        short = info.digest[:12]
        frames = [
            {"status": "pulling manifest"},
            {
                "status": f"pulling {short}",
                "digest": f"sha256:{info.digest}",
                "total": info.size,
                "completed": info.size // 2,
            },
            {
                "status": f"pulling {short}",
                "digest": f"sha256:{info.digest}",
                "total": info.size,
                "completed": info.size,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        resp = web.StreamResponse(headers={"Content-Type": _NDJSON_CT})
        await resp.prepare(request)
        try:
            for i, frame in enumerate(frames):
                if i and self.state.frame_delay_s > 0:
                    await asyncio.sleep(self.state.frame_delay_s)
                await resp.write(_ndjson(frame))
            await resp.write_eof()
        except ConnectionResetError:
            self.state.disconnects += 1
        return resp

    async def delete(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.DeleteRequest")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "model is required")
        if not self.state.remove_model(name):
            raise _ApiError(404, f"model '{name}' not found")
        return web.Response(status=200)

    # ---- native: generation

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.ChatRequest")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support chat")
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise _ApiError(
                400,
                "json: cannot unmarshal "
                f"{_go_type_name(messages)} into Go struct field "
                "ChatRequest.messages of type []api.Message",
            )
        if not messages:
            return _json(
                {
                    "model": name,
                    "created_at": _rfc3339(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "load",
                    "done": True,
                }
            )
        opts = _options(body)
        plan = self.plan(_message_words(messages), opts.get("num_predict"), opts)

        def final(content: str) -> JSONObj:
            return {
                "model": name,
                "created_at": _rfc3339(),
                "message": {"role": "assistant", "content": content},
                "done_reason": "stop",
                "done": True,
                **plan.metrics(),
            }

        if body.get("stream") is False:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            return _json(final(plan.text))
        return await self.pump(
            request,
            plan,
            _Renderer(
                content_type=_NDJSON_CT,
                token=lambda _i, piece: _ndjson(
                    {
                        "model": name,
                        "created_at": _rfc3339(),
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                ),
                done=lambda: _ndjson(final("")),
                error=lambda: _ndjson({"error": MOCK_ERROR}),
            ),
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.GenerateRequest")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support generate")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or prompt == "":
            return _json(
                {
                    "model": name,
                    "created_at": _rfc3339(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        opts = _options(body)
        plan = self.plan(_words(prompt) + _words(body.get("system")), opts.get("num_predict"), opts)

        def final(text: str) -> JSONObj:
            return {
                "model": name,
                "created_at": _rfc3339(),
                "response": text,
                "done": True,
                "done_reason": "stop",
                "context": plan.context(),
                **plan.metrics(),
            }

        if body.get("stream") is False:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            return _json(final(plan.text))
        return await self.pump(
            request,
            plan,
            _Renderer(
                content_type=_NDJSON_CT,
                token=lambda _i, piece: _ndjson(
                    {"model": name, "created_at": _rfc3339(), "response": piece, "done": False}
                ),
                done=lambda: _ndjson(final("")),
                error=lambda: _ndjson({"error": MOCK_ERROR}),
            ),
        )

    # ---- native: embeddings

    @staticmethod
    def _inputs(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _ApiError(400, "invalid input type")

    @staticmethod
    def _dims(body: JSONObj) -> int:
        dims = _as_count(body.get("dimensions"))
        return dims if dims else EMBEDDING_DIM

    async def embed(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter_ns()
        body = self.body("api.EmbedRequest")
        name, _info = self.model(body)
        inputs = self._inputs(body.get("input"))
        if not inputs:
            return _json({"model": name, "embeddings": []})
        dims = self._dims(body)
        out: JSONObj = {
            "model": name,
            "embeddings": [_embedding(text, dims, normalize=True) for text in inputs],
            "total_duration": max(3_000_000, time.perf_counter_ns() - started),
            "load_duration": 1_234_567,
        }
        words = sum(_words(t) for t in inputs)
        if words:
            out["prompt_eval_count"] = words
        return _json(out)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self.body("api.EmbeddingRequest")
        _name, _info = self.model(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _json({"embedding": []})
        return _json({"embedding": _embedding(prompt, EMBEDDING_DIM, normalize=False)})

    # ---- OpenAI compatibility

    @staticmethod
    def _openai_error_bytes(message: str, etype: str = "api_error") -> bytes:
        return _sse({"error": {"message": message, "type": etype, "param": None, "code": None}})

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.ChatCompletionRequest", "EOF")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "[] is too short - 'messages'")
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                        raise _ApiError(400, "invalid message format")
            elif not isinstance(content, str) and not (
                isinstance(msg, dict) and msg.get("tool_calls")
            ):
                raise _ApiError(
                    400,
                    "invalid message content type: <nil>"
                    if content is None
                    else f"invalid message content type: {_go_type_name(content)}",
                )
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support chat")
        n_out = body.get("max_tokens")
        if _as_count(n_out) is None:
            n_out = body.get("max_completion_tokens")
        opts = _options(body)
        plan = self.plan(_message_words(messages), n_out, opts)
        cid = _new_id("chatcmpl-", 999)
        created = int(time.time())
        prompt, output = plan.usage()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }

        if body.get("stream") is not True:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            return _json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": plan.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
                newline=True,
            )

        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True

        def chunk(content: str, finish: str | None) -> JSONObj:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
            }

        return await self.openai_stream(request, plan, chunk, usage if include_usage else None)

    async def openai_stream(
        self,
        request: web.Request,
        plan: _Plan,
        chunk: Callable[[str, str | None], JSONObj],
        usage: JSONObj | None,
    ) -> web.StreamResponse:
        """An OpenAI SSE stream: a chunk per token, the finish chunk, the usage chunk (only when
        the client set ``stream_options.include_usage``), then ``data: [DONE]``."""

        def done() -> bytes:
            out = _sse(chunk("", "stop"))
            if usage is not None:
                last = chunk("", "stop")
                last["choices"] = []
                last["usage"] = usage
                out += _sse(last)
            return out + b"data: [DONE]\n\n"

        return await self.pump(
            request,
            plan,
            _Renderer(
                content_type=_SSE_CT,
                token=lambda _i, piece: _sse(chunk(piece, None)),
                done=done,
                error=lambda: self._openai_error_bytes(MOCK_ERROR),
            ),
        )

    async def openai_completions(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.CompletionRequest", "EOF")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise _ApiError(
                400,
                "json: cannot unmarshal "
                f"{_go_type_name(prompt)} into Go struct field "
                "CompletionRequest.prompt of type string",
            )
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support generate")
        opts = _options(body)
        plan = self.plan(_words(prompt), body.get("max_tokens"), opts)
        cid = _new_id("cmpl-", 999)
        created = int(time.time())
        prompt_n, output = plan.usage()
        usage = {
            "prompt_tokens": prompt_n,
            "completion_tokens": output,
            "total_tokens": prompt_n + output,
        }

        if body.get("stream") is not True:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            return _json(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"text": plan.text, "index": 0, "finish_reason": "stop"}],
                    "usage": usage,
                },
                newline=True,
            )

        so = body.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage") is True
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

        def chunk(text: str, finish: str | None) -> JSONObj:
            out: JSONObj = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "choices": [{"text": text, "index": 0, "finish_reason": finish}],
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if include_usage:
                out["usage"] = zero
            return out

        return await self.openai_stream(request, plan, chunk, usage if include_usage else None)

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.EmbedRequest", "EOF")
        fmt = body.get("encoding_format") or ""
        if not isinstance(fmt, str) or (fmt and fmt.lower() not in ("float", "base64")):
            raise _ApiError(
                400,
                f"Invalid value for 'encoding_format' = {fmt}. "
                "Supported values: ['float', 'base64'].",
            )
        raw = body.get("input")
        if raw == "":
            raw = [""]
        if raw is None or raw == []:
            raise _ApiError(400, "invalid input")
        name, _info = self.model(body)
        inputs = [raw] if isinstance(raw, str) else self._inputs(raw)
        dims = self._dims(body)
        data = []
        for i, text in enumerate(inputs):
            vec = _embedding(text, dims, normalize=True)
            emb: Any = vec
            if fmt.lower() == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        words = sum(_words(t) for t in inputs)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            },
            newline=True,
        )

    @staticmethod
    def _unix(rfc3339: str) -> int:
        try:
            return calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return int(time.time())

    def _openai_model_obj(self, m: ModelInfo, model_id: str) -> JSONObj:
        return {
            "id": model_id,
            "object": "model",
            "created": self._unix(m.modified_at),
            "owned_by": "library",
        }

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        data = [self._openai_model_obj(m, m.name) for m in self.state.models.values()]
        return _json({"object": "list", "data": data}, newline=True)

    async def openai_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        m = self.state.resolve(name)
        if m is None:
            raise _ApiError(404, f"model '{name}' not found")
        return _json(self._openai_model_obj(m, name), newline=True)

    # ---- OpenAI Responses API

    @staticmethod
    def _responses_words(body: JSONObj) -> int:
        total = _words(body.get("instructions"))
        inp = body.get("input")
        if isinstance(inp, str):
            return total + _words(inp)
        if not isinstance(inp, list):
            return total
        for item in inp:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, str):
                total += _words(content)
            elif isinstance(content, list):
                total += sum(_words(p.get("text")) for p in content if isinstance(p, dict))
            if item.get("type") == "function_call_output":
                total += _words(item.get("output"))
        return total

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = self.body("openai.ResponsesRequest", "EOF")
        inp = body.get("input")
        if inp is not None and not isinstance(inp, str | list):
            raise _ApiError(400, "input must be a string or array")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support chat")
        opts = _options(body)
        plan = self.plan(self._responses_words(body), body.get("max_output_tokens"), opts)
        resp_id = _new_id("resp_", 999_999)
        item_id = _new_id("msg_", 999_999)
        created = int(time.time())
        prompt_n, output_n = plan.usage()
        usage = {
            "input_tokens": prompt_n,
            "output_tokens": output_n,
            "total_tokens": prompt_n + output_n,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        instructions = body.get("instructions") or None
        temperature = body.get("temperature")
        top_p = body.get("top_p")

        def part(text: str) -> JSONObj:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def message(status: str, content: list[JSONObj]) -> JSONObj:
            return {
                "id": item_id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }

        def response_obj(
            status: str, output: list[JSONObj], usage_: JSONObj | None, completed: bool
        ) -> JSONObj:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "completed_at": int(time.time()) if completed else None,
                "status": status,
                "incomplete_details": None,
                "model": name,
                "previous_response_id": None,
                "instructions": instructions,
                "output": output,
                "error": None,
                "tools": body.get("tools") or [],
                "tool_choice": "auto",
                "truncation": body.get("truncation") or "disabled",
                "parallel_tool_calls": True,
                "text": {"format": {"type": "text"}},
                "top_p": top_p if isinstance(top_p, int | float) else 1.0,
                "presence_penalty": 0,
                "frequency_penalty": 0,
                "top_logprobs": 0,
                "temperature": temperature if isinstance(temperature, int | float) else 1.0,
                "reasoning": None,
                "usage": usage_,
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "store": False,
                "background": body.get("background") is True,
                "service_tier": "default",
                "metadata": {},
                "safety_identifier": None,
                "prompt_cache_key": None,
            }

        if body.get("stream") is not True:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            return _json(
                response_obj(
                    "completed", [message("completed", [part(plan.text)])], usage, completed=True
                ),
                newline=True,
            )

        seq = [0]

        def event(kind: str, data: JSONObj) -> bytes:
            data["type"] = kind
            data["sequence_number"] = seq[0]
            seq[0] += 1
            # Ollama builds these events as Go maps, which encoding/json writes key-sorted
            return _sse(data, event=kind, sort_keys=True)

        def head() -> bytes:
            return event(
                "response.created", {"response": response_obj("in_progress", [], None, False)}
            ) + event(
                "response.in_progress", {"response": response_obj("in_progress", [], None, False)}
            )

        def token(i: int, piece: str) -> bytes:
            out = b""
            if i == 0:
                out += event(
                    "response.output_item.added",
                    {"output_index": 0, "item": message("in_progress", [])},
                )
                out += event(
                    "response.content_part.added",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")},
                )
            return out + event(
                "response.output_text.delta",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                },
            )

        def done() -> bytes:
            out = b""
            output: list[JSONObj] = []
            if plan.pieces:
                text = plan.text
                out += event(
                    "response.output_text.done",
                    {
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    },
                )
                out += event(
                    "response.content_part.done",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part(text)},
                )
                out += event(
                    "response.output_item.done",
                    {"output_index": 0, "item": message("completed", [part(text)])},
                )
                output = [message("completed", [part(text)])]
            return out + event(
                "response.completed", {"response": response_obj("completed", output, usage, True)}
            )

        def error() -> bytes:
            return event("error", {"code": "api_error", "message": MOCK_ERROR, "param": None})

        return await self.pump(
            request,
            plan,
            _Renderer(
                content_type=_SSE_CT,
                token=token,
                done=done,
                error=error,
                head=head,
                extra_headers={"Cache-Control": "no-cache"},
            ),
        )

    # ---- Anthropic compatibility

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = self.body("anthropic.MessagesRequest", "EOF")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _ApiError(400, "messages is required")
        name, info = self.model(body)
        if "completion" not in info.capabilities:
            raise _ApiError(400, f"{json.dumps(name)} does not support chat")
        system = body.get("system")
        words = _message_words(msgs)
        if isinstance(system, str):
            words += _words(system)
        elif isinstance(system, list):
            words += sum(_words(b.get("text")) for b in system if isinstance(b, dict))
        opts = _options(body)
        plan = self.plan(words, body.get("max_tokens"), opts)
        msg_id = "msg_" + secrets.token_hex(12)
        prompt_n, output_n = plan.usage()

        if body.get("stream") is not True:
            if plan.error_after is not None:
                raise _ApiError(500, MOCK_ERROR)
            content = [{"type": "text", "text": plan.text}] if plan.pieces else None
            return _json(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": name,
                    "content": content,
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": prompt_n, "output_tokens": output_n},
                },
                newline=True,
            )

        def head() -> bytes:
            return _sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": name,
                        "content": [],
                        "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 0},
                    },
                },
                event="message_start",
            )

        def token(i: int, piece: str) -> bytes:
            out = b""
            if i == 0:
                out += _sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    event="content_block_start",
                )
            return out + _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
                event="content_block_delta",
            )

        def done() -> bytes:
            out = b""
            if plan.pieces:
                out += _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            out += _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"input_tokens": prompt_n, "output_tokens": output_n},
                },
                event="message_delta",
            )
            return out + _sse({"type": "message_stop"}, event="message_stop")

        def error() -> bytes:
            return _sse(
                {"type": "error", "error": {"type": "api_error", "message": MOCK_ERROR}},
                event="error",
            )

        return await self.pump(
            request,
            plan,
            _Renderer(
                content_type=_SSE_CT,
                token=token,
                done=done,
                error=error,
                head=head,
            ),
        )


# --------------------------------------------------------------------------- app


def _error_response(path: str, status: int, message: str) -> web.Response:
    if path == "/v1/messages":
        etype = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            503: "overloaded_error",
        }.get(status, "api_error")
        return _json(
            {
                "type": "error",
                "error": {"type": etype, "message": message},
                "request_id": "req_" + secrets.token_hex(12),
            },
            status,
            newline=True,
        )
    if path.startswith(_OPENAI_PATHS):
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return _json(
            {"error": {"message": message, "type": etype, "param": None, "code": None}},
            status,
            newline=True,
        )
    return _json({"error": message}, status)


def _middleware(state: MockOllama) -> Middleware:
    @web.middleware
    async def record_and_translate(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = _Body()
        raw = b""
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = _Body(value=_as_go_reads(json.loads(raw)), empty=False)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    body = _Body(error=_go_json_error(raw, exc), empty=False)
        state.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body.value,
                raw=raw.decode("utf-8", "replace"),
            )
        )
        token = _BODY.set(body)
        delay_token = _DELAY_HEADER.set(request.headers.get("x-mock-frame-delay-ms"))
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error_response(request.path, exc.status, exc.message)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            # gin answers unknown routes and wrong methods alike
            return web.Response(status=404, text="404 page not found", content_type="text/plain")
        finally:
            _BODY.reset(token)
            _DELAY_HEADER.reset(delay_token)

    return record_and_translate


def create_app(state: MockOllama) -> web.Application:
    """The aiohttp application serving ``state``."""
    h = _Handlers(state)
    app = web.Application(middlewares=[_middleware(state)], client_max_size=64 * 1024 * 1024)
    r = app.router
    r.add_get("/", h.root)
    r.add_get("/api/version", h.version)
    r.add_get("/api/tags", h.tags)
    r.add_get("/api/ps", h.ps)
    r.add_post("/api/show", h.show)
    r.add_post("/api/pull", h.pull)
    r.add_delete("/api/delete", h.delete)
    r.add_post("/api/chat", h.chat)
    r.add_post("/api/generate", h.generate)
    r.add_post("/api/embed", h.embed)
    r.add_post("/api/embeddings", h.embeddings)
    r.add_post("/v1/chat/completions", h.openai_chat)
    r.add_post("/v1/completions", h.openai_completions)
    r.add_post("/v1/embeddings", h.openai_embeddings)
    r.add_get("/v1/models", h.openai_models)
    r.add_get("/v1/models/{model:.+}", h.openai_model)
    r.add_post("/v1/responses", h.responses)
    r.add_post("/v1/messages", h.messages)
    # Test-only introspection; Envoy never routes /_mock to a backend.
    r.add_get("/_mock/requests", h.recorded)
    return app


async def start(
    host: str, port: int, state: MockOllama | None = None
) -> tuple[web.AppRunner, MockOllama]:
    """Serve a mock on ``host:port`` (port 0: a free one, see :func:`bound_port`).
    Stop it with ``await runner.cleanup()``."""
    state = MockOllama() if state is None else state
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, state


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")


async def _serve(host: str, port: int, frame_delay_s: float) -> None:
    runner, _state = await start(host, port, MockOllama(frame_delay_s=frame_delay_s))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("mock ollama %s listening on http://%s:%d", OLLAMA_VERSION, host, bound_port(runner))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A mock Ollama server for tests and dev.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--frame-delay-s", type=float, default=0.0, help="sleep between streamed frames (default 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(args.host, args.port, args.frame_delay_s))


if __name__ == "__main__":
    main()
