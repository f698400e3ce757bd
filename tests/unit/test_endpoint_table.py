"""The endpoint table (gateway/endpoints.py) states each endpoint's facts once; these are
written out by hand, so a changed row fails here before it changes what a client sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz import check, fields, payload
from authz.request import AuthzRequest
from gateway import endpoints, rewrite
from gateway.endpoints import Kind, Scope, Surface

# path: method, scope, kind, surface, (cap field, aliases, in options), framing, usage opt-in
FACTS: dict[str, tuple[Any, ...]] = {
    "/api/chat": (
        "POST",
        "chat",
        "inference",
        "ollama",
        ("num_predict", (), True),
        "ndjson",
        False,
    ),
    "/api/generate": (
        *("POST", "chat", "inference", "ollama"),
        ("num_predict", (), True),
        *("ndjson", False),
    ),
    "/api/embed": ("POST", "embeddings", "inference", "ollama", None, None, False),
    "/api/embeddings": ("POST", "embeddings", "inference", "ollama", None, None, False),
    "/api/tags": ("GET", "models", "listing", "ollama", None, None, False),
    "/api/show": ("POST", "models", "show", "ollama", None, None, False),
    "/api/ps": ("GET", "models", "listing", "ollama", None, None, False),
    "/api/version": ("GET", "models", "version", "ollama", None, None, False),
    "/v1/chat/completions": (
        *("POST", "chat", "inference", "openai"),
        ("max_tokens", ("max_completion_tokens",), False),
        *("sse", True),
    ),
    "/v1/completions": (
        *("POST", "chat", "inference", "openai"),
        ("max_tokens", (), False),
        *("sse", True),
    ),
    "/v1/responses": (
        *("POST", "chat", "inference", "openai"),
        ("max_output_tokens", (), False),
        *("sse", False),
    ),
    "/v1/messages": (
        *("POST", "chat", "inference", "openai"),
        ("max_tokens", (), False),
        *("sse", False),
    ),
    "/v1/embeddings": ("POST", "embeddings", "inference", "openai", None, None, False),
    "/v1/models": ("GET", "models", "listing", "openai", None, None, False),
}


def _facts(e: endpoints.Endpoint) -> tuple[Any, ...]:
    cap = e.output_cap
    return (
        *(e.method, e.scope.value, e.kind.value, e.surface.value),
        None if cap is None else (cap.field, cap.aliases, cap.in_options),
        None if e.framing is None else e.framing.value,
        e.usage_opt_in,
    )


def test_the_table_states_each_endpoints_facts() -> None:
    assert {path: _facts(e) for (_, path), e in endpoints.ENDPOINTS.items()} == FACTS
    detail = endpoints.lookup("GET", "/v1/models/llama3:8b")
    assert detail is endpoints.MODEL_DETAIL
    assert (detail.scope, detail.kind, detail.surface) == (Scope.MODELS, Kind.LISTING, "openai")
    assert (detail.output_cap, detail.framing, detail.usage_opt_in) == (None, None, False)


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1", "openai"),
        ("/v1/files", "openai"),
        ("/v1/models/x", "openai"),
        ("/api/chat", "ollama"),
        ("/api/pull", "ollama"),
        ("/v1x", "ollama"),
        ("/", "ollama"),
    ],
)
def test_any_path_has_a_surface_for_its_error_body(path: str, surface: str) -> None:
    assert endpoints.surface(path) is Surface(surface)
    assert AuthzRequest("POST", path, {}, b"").surface == surface


def test_every_row_speaks_the_surface_of_its_prefix() -> None:
    # A refused path under /v1/ answers OpenAI's shapes: so must every endpoint there.
    for (_, path), e in endpoints.ENDPOINTS.items():
        assert e.surface is (Surface.OPENAI if path.startswith("/v1/") else Surface.OLLAMA)


def test_the_body_allowlist_covers_exactly_the_inference_endpoints_and_their_facts() -> None:
    inference = {p: e for (_, p), e in endpoints.ENDPOINTS.items() if e.kind is Kind.INFERENCE}
    assert set(fields.FIELDS) == set(inference)
    for path, e in inference.items():
        if e.output_cap is not None:
            carried = {"options"} if e.output_cap.in_options else set(e.output_cap.fields)
            assert carried <= fields.FIELDS[path], path
        assert ("stream" in fields.FIELDS[path]) is (e.framing is not None), path
        if e.usage_opt_in:
            assert "stream_options" in fields.FIELDS[path], path


def _parse(path: str, body: dict[str, Any]) -> payload.Payload:
    req = AuthzRequest(
        "POST", path, {"content-type": ["application/json"]}, json.dumps(body).encode()
    )
    return payload.parse(
        req, embeddings=path in ("/api/embed", "/api/embeddings", "/v1/embeddings")
    )


def _rewritten(path: str, body: dict[str, Any], cap: int) -> dict[str, Any]:
    out = rewrite.rewrite(json.dumps(body).encode(), rewrite.Limits(path, True, cap, None, None))
    return body if out.body is None else dict(json.loads(out.body))


@pytest.mark.parametrize(
    ("path", "asks", "read", "capped_at_5"),
    [
        ("/api/chat", {"options": {"num_predict": 7}}, 7, {"options": {"num_predict": 5}}),
        ("/api/generate", {"options": {"num_predict": 7}}, 7, {"options": {"num_predict": 5}}),
        ("/v1/completions", {"max_tokens": 7}, 7, {"max_tokens": 5}),
        ("/v1/responses", {"max_output_tokens": 7}, 7, {"max_output_tokens": 5}),
        ("/v1/messages", {"max_tokens": 7}, 7, {"max_tokens": 5}),
        # OpenAI's max_completion_tokens supersedes max_tokens; the backend gets one value.
        (
            "/v1/chat/completions",
            {"max_tokens": 9, "max_completion_tokens": 7},
            7,
            {"max_tokens": 5, "max_completion_tokens": 5},
        ),
        (
            "/v1/chat/completions",
            {"max_completion_tokens": 7},
            7,
            {"max_tokens": 5, "max_completion_tokens": 5},
        ),
        ("/api/embed", {"input": "x"}, 0, {"input": "x"}),
        ("/v1/embeddings", {"input": "x"}, 0, {"input": "x"}),
    ],
)
def test_the_output_cap_is_read_and_written_in_the_endpoints_field(
    path: str, asks: dict[str, Any], read: int, capped_at_5: dict[str, Any]
) -> None:
    assert _parse(path, {"model": "m", **asks}).output_cap == read
    assert _rewritten(path, {"model": "m", **asks}, 5) == {"model": "m", **capped_at_5}


@pytest.mark.parametrize(
    ("path", "asked"),
    [
        ("/v1/chat/completions", True),
        ("/v1/completions", True),
        ("/v1/responses", False),
        ("/v1/messages", False),
        ("/api/chat", False),
    ],
)
def test_only_opt_in_streams_are_made_to_ask_for_usage(path: str, asked: bool) -> None:
    out = _rewritten(path, {"model": "m", "stream": True}, 0)
    assert ("stream_options" in out) is asked
    if asked:
        assert out["stream_options"] == {"include_usage": True}


def test_the_table_names_the_key_header_and_the_listing_of_each_endpoint() -> None:
    key_headers = {p: e.key_header for (_, p), e in endpoints.ENDPOINTS.items() if e.key_header}
    assert key_headers == {"/v1/messages": "x-api-key"}
    assert endpoints.KEY_HEADERS == ("authorization", "x-api-key")
    listed = {p: e.listing for (_, p), e in endpoints.ENDPOINTS.items() if e.listing}
    assert listed == {"/api/tags": "tags", "/api/ps": "ps", "/v1/models": "models"}
    assert endpoints.MODEL_DETAIL.listing == "model"
    assert endpoints.MODEL_DETAIL.key_header is None
    # Every listing kind answers exactly one thing; no other kind is a listing.
    for e in (*endpoints.ENDPOINTS.values(), endpoints.MODEL_DETAIL):
        assert (e.listing is not None) is (e.kind is Kind.LISTING), e.path
    assert endpoints.model_in_path("/v1/models/library%2Fllama3:8b") == "library/llama3:8b"
    assert endpoints.model_in_path("/v1/models/qwen3:0.6b") == "qwen3:0.6b"
    caps = endpoints.OUTPUT_CAP_FIELDS
    assert caps == {"max_tokens", "max_completion_tokens", "max_output_tokens"}


def _key_request(path: str, headers: dict[str, list[str]]) -> AuthzRequest:
    return AuthzRequest("POST", path, headers, b"{}")


KEY = "nz_live_abcdefgh_" + "s" * 32


@pytest.mark.parametrize(
    ("path", "headers", "presented"),
    [
        ("/v1/messages", {"x-api-key": [KEY]}, KEY),
        ("/v1/messages", {"authorization": [f"Bearer {KEY}"]}, KEY),
        ("/v1/messages", {"x-api-key": [KEY], "authorization": [f"Bearer {KEY}"]}, None),
        ("/v1/messages", {"x-api-key": [KEY, KEY]}, None),
        ("/v1/chat/completions", {"x-api-key": [KEY]}, None),  # only Anthropic's endpoint
        ("/api/chat", {"x-api-key": [KEY]}, None),
        ("/api/chat", {"x-api-key": [KEY], "authorization": [f"Bearer {KEY}"]}, KEY),
        ("/v1/models/x-api-key", {"x-api-key": [KEY]}, None),
    ],
)
def test_the_key_is_read_from_the_endpoints_key_header_only(
    path: str, headers: dict[str, list[str]], presented: str | None
) -> None:
    assert check.presented_key(_key_request(path, headers)) == presented


@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/v1/chat/completions", {"max_tokens": 7, "max_completion_tokens": 7}),
        ("/v1/completions", {"max_tokens": 7}),
        ("/v1/responses", {"max_output_tokens": 7}),
        ("/v1/messages", {"max_tokens": 7}),
    ],
)
def test_the_output_cap_fields_are_not_prompt(path: str, cap: dict[str, int]) -> None:
    messages = [{"role": "user", "content": "hi"}]
    text = {"input": "hi"} if path == "/v1/responses" else {"messages": messages}
    if path == "/v1/completions":
        text = {"prompt": "hi"}
    bare = _parse(path, {"model": "m", **text}).prompt_estimate
    assert _parse(path, {"model": "m", **text, **cap}).prompt_estimate == bare
