"""Ollama's whole surface, explicitly; bad input gets a clear, generic error; keep_alive is
clamped per tenant — through Envoy's listener."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.rewrite import keep_alive_seconds
from gateway.settings import Settings
from tests.e2e.test_authz_support import CHAT, FORBIDDEN, FORBIDDEN_OPENAI, caller
from tests.gateway_client import Caller, Gateway

BAD_REQUEST = {"error": "invalid request"}
BAD_REQUEST_OPENAI = {
    "error": {
        "message": "invalid request",
        "type": "invalid_request_error",
        "code": "invalid_request",
    }
}
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def who(gw: Gateway) -> Caller:
    return caller(gw)


ALLOWED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/chat", {"model": "llama3.2", "messages": MESSAGES, "stream": False}),
    ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hi"}),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("POST", "/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES}),
    ("POST", "/v1/completions", {"model": "llama3.2", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/llama3.2", None),
    ("POST", "/v1/responses", {"model": "llama3.2", "input": "hi"}),
    ("POST", "/v1/messages", {"model": "llama3.2", "max_tokens": 5, "messages": MESSAGES}),
]


@pytest.mark.parametrize(("method", "path", "body"), ALLOWED, ids=[p for _, p, _ in ALLOWED])
def test_every_allowed_endpoint_answers(
    gw: Gateway, who: Caller, method: str, path: str, body: dict[str, Any] | None
) -> None:
    resp = httpx.request(method, f"{gw.url}{path}", json=body, headers=who.headers, timeout=10)
    assert resp.status_code == 200, resp.text


BLOCKED = [
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/blobs/sha256:0000"),
    ("HEAD", "/api/blobs/sha256:0000"),
    ("GET", "/api/me"),
    ("POST", "/api/me"),
    ("POST", "/api/signout"),
    ("GET", "/api/user/keys/abc"),
    ("POST", "/api/experimental/aliases"),
    ("GET", "/api/status"),
    ("GET", "/api/chat"),
    ("POST", "/api/tags"),
    ("GET", "/api/some-future-endpoint"),
    ("GET", "/"),
]


@pytest.mark.parametrize(("method", "path"), BLOCKED, ids=[f"{m} {p}" for m, p in BLOCKED])
def test_everything_else_on_the_native_surface_is_the_generic_403(
    gw: Gateway, who: Caller, method: str, path: str
) -> None:
    resp = httpx.request(method, f"{gw.url}{path}", json={"model": "llama3.2"}, headers=who.headers)
    assert resp.status_code == 403
    if method != "HEAD":
        assert resp.json() == FORBIDDEN


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/images/generations"),
        ("GET", "/v1/files"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/models"),
    ],
)
def test_everything_else_on_the_openai_surface_is_the_generic_403(
    gw: Gateway, who: Caller, method: str, path: str
) -> None:
    resp = httpx.request(method, f"{gw.url}{path}", json={"model": "x"}, headers=who.headers)
    assert resp.status_code == 403
    assert resp.json() == FORBIDDEN_OPENAI


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"this is not json", "application/json"),
        (b'{"model": "llama3.2", "messages": [', "application/json"),
        (b'["llama3.2"]', "application/json"),
        (b'{"messages": []}', "application/json"),
        (b'{"model": "", "messages": []}', "application/json"),
        (b'{"model": 42, "messages": []}', "application/json"),
        (b'{"model": "llama3.2", "stream": "yes"}', "application/json"),
        (b"", "application/json"),
        (b'{"model": "llama3.2", "messages": []}\xff', "application/json"),
    ],
    ids=[
        "not-json",
        "truncated",
        "array",
        "no-model",
        "empty-model",
        "model-not-string",
        "stream-not-bool",
        "empty",
        "bad-utf8",
    ],
)
def test_an_unusable_body_is_one_generic_400(
    gw: Gateway, who: Caller, content: bytes, content_type: str
) -> None:
    headers = {**who.headers, "content-type": content_type}
    resp = httpx.post(f"{gw.url}/api/chat", content=content, headers=headers)
    assert (resp.status_code, resp.json()) == (400, BAD_REQUEST)
    resp = httpx.post(f"{gw.url}/v1/chat/completions", content=content, headers=headers)
    assert (resp.status_code, resp.json()) == (400, BAD_REQUEST_OPENAI)


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
def test_a_body_that_is_not_json_by_type_is_415(
    gw: Gateway, who: Caller, content_type: str
) -> None:
    resp = httpx.post(
        f"{gw.url}/api/chat",
        content=b'{"model": "llama3.2", "messages": []}',
        headers={**who.headers, "content-type": content_type},
    )
    assert (resp.status_code, resp.json()) == (415, {"error": "request body must be JSON"})


def test_curl_style_form_content_type_with_a_json_body_is_accepted(
    gw: Gateway, who: Caller
) -> None:
    # `curl -d '{…}'` (Ollama's own examples) sends application/x-www-form-urlencoded.
    resp = httpx.post(
        f"{gw.url}/api/generate",
        content=b'{"model": "llama3.2", "prompt": "hi", "stream": false}',
        headers={**who.headers, "content-type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200


def test_a_body_over_the_maximum_is_413_in_the_surface_shape(gw: Gateway, who: Caller) -> None:
    limit = Settings().max_request_bytes
    filler = "x" * (limit + 1 - len('{"model": "llama3.2", "prompt": ""}'))
    body = ('{"model": "llama3.2", "prompt": "' + filler + '"}').encode()
    assert len(body) == limit + 1
    headers = {**who.headers, "content-type": "application/json"}
    resp = httpx.post(f"{gw.url}/api/generate", content=body, headers=headers)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "request body too large"}
    resp = httpx.post(f"{gw.url}/v1/completions", content=body, headers=headers)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"
    # A body just under the maximum is a request like any other. (Not exactly at it: accounting
    # rewrites inference bodies — output cap, keep_alive — and the rewritten body must fit too.)
    near = body[: limit - 4096 - 2] + b'"}'
    resp = httpx.post(f"{gw.url}/api/generate", content=near, headers=headers, timeout=10)
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("asked", "low", "high"),
    [(0, 30, 30), ("0s", 30, 30), (-1, 120, 120), ("24h", 120, 120), ("1m", 60, 60)],
)
def test_keep_alive_is_clamped_to_the_tenants_range(
    gw: Gateway, asked: Any, low: float, high: float
) -> None:
    who = caller(gw, {"keep_alive_min_s": 30, "keep_alive_max_s": 120})
    marker = f"keepalive-{id(asked)}-{low}"
    body = {
        **CHAT,
        "stream": False,
        "keep_alive": asked,
        "messages": [{"role": "user", "content": marker}],
    }
    assert httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers).status_code == 200
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    mine = [r for r in seen if marker in str(r.get("body"))]
    assert mine
    upstream = keep_alive_seconds(mine[-1]["body"]["keep_alive"])
    assert upstream is not None and low <= upstream <= high


# Numbers no Go float64 can hold, as JSON numbers (refused like Ollama's decoder refuses them)
# and as strings (Ollama refuses them as durations; the gateway clamps them like any other
# keep_alive it cannot read): a clear answer either way, never a 5xx (issue 11 §11).
@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_a_keep_alive_number_no_float_can_hold_is_400(
    gw: Gateway, who: Caller, number: str
) -> None:
    native = (
        '{"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "hi"}],'
        f' "keep_alive": {number}}}'
    )
    headers = {**who.headers, "content-type": "application/json"}
    resp = httpx.post(f"{gw.url}/api/chat", content=native, headers=headers, timeout=10)
    assert (resp.status_code, resp.json()) == (400, BAD_REQUEST)
    openai = (
        '{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],'
        f' "keep_alive": {number}}}'
    )
    resp = httpx.post(f"{gw.url}/v1/chat/completions", content=openai, headers=headers, timeout=10)
    assert (resp.status_code, resp.json()) == (400, BAD_REQUEST_OPENAI)


@pytest.mark.parametrize("text", ["1e400", "-1e400", "NaN", "inf", "1e400h"])
def test_a_keep_alive_string_no_float_can_hold_is_clamped_not_5xx(gw: Gateway, text: str) -> None:
    who = caller(gw, {"keep_alive_min_s": 30, "keep_alive_max_s": 120})
    marker = f"keepalive-text-{text}"
    body = {
        **CHAT,
        "stream": False,
        "keep_alive": text,
        "messages": [{"role": "user", "content": marker}],
    }
    resp = httpx.post(f"{gw.url}/api/chat", json=body, headers=who.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    seen = httpx.get(f"{gw.stack.ollama_urls[0]}/_mock/requests").json()
    mine = [r for r in seen if marker in str(r.get("body"))]
    assert mine
    upstream = keep_alive_seconds(mine[-1]["body"]["keep_alive"])
    assert upstream is not None and 30 <= upstream <= 120
