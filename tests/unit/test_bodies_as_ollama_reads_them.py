"""The body we check is the body Ollama runs: for bodies with every spelling of the policed
keys (case, U+017F for s, U+212A for k, two spellings at once), what authz and accounting read
equals what Ollama's Go decoder reads (tests/ollama_decoder), or authz refuses the body; and
accounting's rewrite holds as Ollama reads the rewritten body."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import payload
from authz.request import AuthzRequest
from gateway import gojson, rewrite
from tests.ollama_decoder import CAP_FIELD, OllamaDecoder

# The fields each endpoint's Go struct has, of those the gateway polices.
FIELDS = {
    "/api/chat": ("model", "stream", "keep_alive", "num_predict"),
    "/api/generate": ("model", "stream", "keep_alive", "num_predict"),
    "/api/embed": ("model", "keep_alive", "num_predict"),
    "/api/embeddings": ("model", "keep_alive", "num_predict"),
    "/v1/chat/completions": (
        "model",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "include_usage",
    ),
    "/v1/completions": ("model", "stream", "max_tokens", "include_usage"),
    "/v1/embeddings": ("model",),
    "/v1/responses": ("model", "stream", "max_output_tokens"),
    "/v1/messages": ("model", "stream", "max_tokens"),
}
EMBEDDINGS = {"/api/embed", "/api/embeddings", "/v1/embeddings"}
CAP, KEEP_MIN, KEEP_MAX = 50, 60, 600

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["llama3.2", "qwen2.5:0.5b", "gpt-oss:120b-cloud"]),
    "stream": st.booleans(),
    "keep_alive": st.one_of(st.integers(-1, 100_000), st.sampled_from(["5m", "0", "-1", "1h"])),
    "max_tokens": st.integers(1, 10**6),
    "max_completion_tokens": st.integers(1, 10**6),
    "max_output_tokens": st.integers(1, 10**6),
    "messages": st.just([{"role": "user", "content": "hi"}]),
    "prompt": st.just("hi"),
}


@st.composite
def spelling(draw: st.DrawFn, name: str) -> str:
    """``name`` with each letter as is, upper case, or (s, k) its non-ASCII fold twin."""
    twins = {"s": "\u017f", "k": "\u212a"}
    out = []
    for char in name:
        choice = draw(st.integers(0, 2)) if char.isalpha() else 0
        out.append([char, char.upper(), twins.get(char, char.upper())][choice])
    return "".join(out)


def _encode(pairs: list[tuple[str, Any]], ascii_only: bool) -> str:
    items = (json.dumps(k, ensure_ascii=ascii_only) + ":" + json.dumps(v) for k, v in pairs)
    return "{" + ",".join(items) + "}"


@st.composite
def body(draw: st.DrawFn) -> tuple[str, str]:
    endpoint = draw(st.sampled_from(sorted(FIELDS)))
    pairs: list[tuple[str, Any]] = []
    names = ["model", *draw(st.sets(st.sampled_from(sorted(VALUES))))]
    for name in names:
        for _ in range(draw(st.integers(1, 2))):  # two spellings: a collision
            pairs.append((draw(spelling(name)), draw(VALUES[name])))
    if draw(st.booleans()):
        inner = [(draw(spelling("num_predict")), draw(st.integers(1, 10**6)))]
        pairs.append((draw(spelling("options")), dict(inner)))
    if draw(st.booleans()):
        inner = [(draw(spelling("include_usage")), draw(st.booleans()))]
        pairs.append((draw(spelling("stream_options")), dict(inner)))
    random.Random(draw(st.integers(0, 2**16))).shuffle(pairs)
    return endpoint, _encode(pairs, draw(st.booleans()))


def gateway_view(body: dict[str, Any]) -> dict[str, Any]:
    """The policed fields as authz and accounting read them."""
    options = gojson.field(body, "options")
    usage = gojson.field(body, "stream_options")
    view = {name: gojson.field(body, name) for name in VALUES}
    view["num_predict"] = options.get("num_predict") if isinstance(options, dict) else None
    view["include_usage"] = (
        gojson.field(usage, "include_usage") if isinstance(usage, dict) else None
    )
    return view


def ollama_view(endpoint: str, answer: dict[str, Any]) -> dict[str, Any]:
    view = dict(answer)  # keep_alive arrives as the raw JSON Go kept: null when absent
    if endpoint == "/v1/messages" and view["max_tokens"] == 0:
        view["max_tokens"] = None  # a plain int in Ollama's struct: 0 is absent
    return view


def _request(endpoint: str, raw: str) -> AuthzRequest:
    headers = {"content-type": ["application/json"]}
    return AuthzRequest("POST", endpoint, headers, raw.encode("utf-8"))


def _admitted(endpoint: str, raw: str) -> payload.Payload | None:
    """What authz parsed of the body, or None when it refused it (always with a 400)."""
    try:
        return payload.parse(_request(endpoint, raw), embeddings=endpoint in EMBEDDINGS)
    except payload.BadRequest as refused:
        assert refused.status == 400
        return None


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=body())
def test_what_authz_admits_ollama_reads_the_same(
    ollama_decoder: OllamaDecoder, case: tuple[str, str]
) -> None:
    endpoint, raw = case
    parsed = _admitted(endpoint, raw)
    if parsed is None:
        return  # refused: Ollama never sees it
    answer = ollama_decoder.decode(endpoint, raw)
    if "error" in answer:
        return  # Ollama refuses it too (e.g. a number where it wants a string)
    ours, theirs = gateway_view(parsed.body), ollama_view(endpoint, answer)
    for name in FIELDS[endpoint]:
        assert ours[name] == theirs[name], (name, raw)
    assert parsed.model == theirs["model"]
    if "stream" in FIELDS[endpoint]:
        default = endpoint in ("/api/chat", "/api/generate")
        assert parsed.stream == (default if theirs["stream"] is None else theirs["stream"])


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=body())
def test_the_rewrite_holds_as_ollama_reads_the_rewritten_body(
    ollama_decoder: OllamaDecoder, case: tuple[str, str]
) -> None:
    endpoint, raw = case
    parsed = _admitted(endpoint, raw)
    if parsed is None:
        return
    limits = rewrite.Limits(endpoint, parsed.stream, CAP, KEEP_MIN, KEEP_MAX)
    rewritten = rewrite.rewrite(raw.encode("utf-8"), limits).body or raw.encode("utf-8")
    gojson.loads(rewritten)  # what we forward is unambiguous too: one key per field
    answer = ollama_decoder.decode(endpoint, rewritten)
    if "error" in answer:
        return
    theirs = ollama_view(endpoint, answer)
    assert theirs["model"] == parsed.model
    if endpoint in CAP_FIELD:
        cap = theirs[CAP_FIELD[endpoint]]
        assert cap is not None and 0 < cap <= CAP, raw
    if theirs.get("max_completion_tokens") is not None:
        assert theirs["max_completion_tokens"] <= CAP
    keep_alive = theirs.get("keep_alive")
    if keep_alive is not None and endpoint.startswith("/api/"):
        seconds = rewrite.keep_alive_seconds(keep_alive)
        assert seconds is not None and KEEP_MIN <= seconds <= KEEP_MAX, raw
    if endpoint in ("/v1/chat/completions", "/v1/completions") and theirs["stream"] is True:
        assert theirs["include_usage"] is True


@pytest.mark.parametrize(
    ("endpoint", "raw", "field", "value"),
    [
        ("/api/chat", '{"MODEL": "qwen2.5:0.5b", "messages": []}', "model", "qwen2.5:0.5b"),
        ("/v1/chat/completions", '{"model": "m", "max_token\u017f": 7}', "max_tokens", 7),
        ("/api/generate", '{"model": "m", "Keep_Alive": 0}', "keep_alive", 0),
        ("/v1/completions", '{"model": "m", "Stream": true}', "stream", True),
    ],
)
def test_one_odd_spelling_is_read_as_ollama_reads_it(
    ollama_decoder: OllamaDecoder, endpoint: str, raw: str, field: str, value: Any
) -> None:
    parsed = payload.parse(_request(endpoint, raw), embeddings=False)
    assert gateway_view(parsed.body)[field] == value
    assert ollama_view(endpoint, ollama_decoder.decode(endpoint, raw))[field] == value
