"""Through Envoy, on every inference endpoint: a body Ollama could read differently from the
gateway (keys equal under Go's case folding) is refused before the backend sees it; a body
with odd but unambiguous spellings is checked as Ollama reads it; and the bytes that reach the
backend, decoded by Ollama's Go decoder (tests/ollama_decoder), carry the model authz admitted
and the output cap it reserved for."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.gateway_client import Caller, Gateway
from tests.ollama_decoder import CAP_FIELD, OllamaDecoder

LONG_S = "\u017f"
ASKED = 7  # an output cap below the default (1024) authz would otherwise reserve and impose


def _rest(endpoint: str, marker: str) -> dict[str, Any]:
    """The non-model fields of a minimal request to ``endpoint`` (the marker in its text)."""
    messages = [{"role": "user", "content": marker}]
    bodies: dict[str, dict[str, Any]] = {
        "/api/chat": {"messages": messages, "stream": False},
        "/api/generate": {"prompt": marker, "stream": False},
        "/api/embed": {"input": marker},
        "/api/embeddings": {"prompt": marker},
        "/v1/chat/completions": {"messages": messages},
        "/v1/completions": {"prompt": marker},
        "/v1/embeddings": {"input": marker},
        "/v1/responses": {"input": marker},
        "/v1/messages": {"messages": messages, "max_tokens": 8},
    }
    return bodies[endpoint]


INFERENCE = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
]
BAD_REQUEST = {
    "ollama": {"error": "invalid request"},
    "openai": {
        "error": {
            "message": "invalid request",
            "type": "invalid_request_error",
            "code": "invalid_request",
        }
    },
}


@pytest.fixture(scope="module")
def llama_only(gw: Gateway) -> Caller:
    return gw.caller({"allow_all": False, "allowed_models": ["llama3.2"]})


def _object(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object with these keys in this order (duplicates and spellings kept)."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


def _post(gw: Gateway, caller: Caller, endpoint: str, raw: str) -> httpx.Response:
    headers = {**caller.headers, "content-type": "application/json"}
    return httpx.post(f"{gw.url}{endpoint}", content=raw.encode("utf-8"), headers=headers)


def _reached_backend(gw: Gateway, marker: str) -> list[dict[str, Any]]:
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    return [r for r in seen if marker in r.get("raw", "")]


@pytest.mark.parametrize("endpoint", INFERENCE)
@pytest.mark.parametrize(
    "spellings",
    [("model", "MODEL"), ("model", "Model"), ("model", "model"), ("model", f"mode{chr(0x4C)}")],
    ids=["MODEL", "Model", "duplicate", "modeL"],
)
def test_two_spellings_of_the_model_are_refused_before_the_backend(
    gw: Gateway, llama_only: Caller, endpoint: str, spellings: tuple[str, str]
) -> None:
    marker = f"collide-{time.monotonic_ns()}"
    pairs = [(spellings[0], "llama3.2"), (spellings[1], "qwen2.5:0.5b")]
    raw = _object([*pairs, *_rest(endpoint, marker).items()])
    resp = _post(gw, llama_only, endpoint, raw)
    assert resp.status_code == 400
    assert resp.json() == BAD_REQUEST["openai" if endpoint.startswith("/v1/") else "ollama"]
    assert _reached_backend(gw, marker) == []


@pytest.mark.parametrize(
    ("endpoint", "pairs"),
    [
        ("/v1/chat/completions", [("max_tokens", 5), (f"max_token{LONG_S}", 100_000)]),
        ("/api/generate", [("keep_alive", 300), ("\u212aeep_alive", 0)]),
        ("/api/chat", [("stream", False), ("Stream", True)]),
        ("/v1/responses", [("max_output_tokens", 5), ("Max_Output_Tokens", 100_000)]),
    ],
    ids=["max_tokens-long-s", "keep_alive-kelvin", "stream", "max_output_tokens"],
)
def test_two_spellings_of_any_policed_field_are_refused(
    gw: Gateway, llama_only: Caller, endpoint: str, pairs: list[tuple[str, Any]]
) -> None:
    marker = f"collide-{time.monotonic_ns()}"
    raw = _object([("model", "llama3.2"), *_rest(endpoint, marker).items(), *pairs])
    resp = _post(gw, llama_only, endpoint, raw)
    assert resp.status_code == 400
    assert _reached_backend(gw, marker) == []


@pytest.mark.parametrize("endpoint", ["/api/chat", "/v1/chat/completions", "/api/embed"])
def test_one_odd_spelling_of_the_model_is_checked_as_that_model(
    gw: Gateway, llama_only: Caller, endpoint: str
) -> None:
    marker = f"odd-{time.monotonic_ns()}"
    raw = _object([("MODEL", "qwen2.5:0.5b"), *_rest(endpoint, marker).items()])
    resp = _post(gw, llama_only, endpoint, raw)
    assert resp.status_code == 403
    assert _reached_backend(gw, marker) == []


@pytest.mark.parametrize("endpoint", INFERENCE)
def test_the_forwarded_body_is_the_checked_body_as_ollama_decodes_it(
    gw: Gateway, llama_only: Caller, ollama_decoder: OllamaDecoder, endpoint: str
) -> None:
    """Odd spellings of the model and the output cap: authz reads them as Ollama does, so the
    cap it reserved for (7, below the default 1024 it would otherwise impose) is the one
    Ollama runs with."""
    marker = f"forwarded-{time.monotonic_ns()}"
    rest = _rest(endpoint, marker)
    rest.pop("max_tokens", None)
    pairs: list[tuple[str, Any]] = [("Model", "llama3.2"), *rest.items()]
    odd_cap = {
        "/api/chat": ("Options", {"num_predict": ASKED}),
        "/api/generate": ("OPTIONS", {"num_predict": ASKED}),
        "/v1/chat/completions": (f"max_token{LONG_S}", ASKED),
        "/v1/completions": ("Max_Tokens", ASKED),
        "/v1/responses": ("MAX_OUTPUT_TOKENS", ASKED),
        "/v1/messages": ("max_tokenS", ASKED),
    }
    if endpoint in odd_cap:
        pairs.append(odd_cap[endpoint])
    resp = _post(gw, llama_only, endpoint, _object(pairs))
    assert resp.status_code == 200, resp.text
    (seen,) = _reached_backend(gw, marker)
    ollama = ollama_decoder.decode(endpoint, seen["raw"])
    assert "error" not in ollama, ollama
    assert ollama["model"] == "llama3.2"
    if endpoint in CAP_FIELD:
        assert ollama[CAP_FIELD[endpoint]] == ASKED, seen["raw"]
