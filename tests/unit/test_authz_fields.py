"""The body policy without a stack: each endpoint's field allowlist against Ollama's request
structs (tests/ollama_decoder/main.go), the options rules, and the prompt estimate as an upper
bound (UTF-8 bytes of the text, one token per context id, nesting refused past a limit)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from authz import fields, payload
from authz.request import AuthzRequest
from tests.ollama_decoder import SOURCE

DEBUG = {"_debug_render_only"}
# The decoder's structs that copy Ollama's native request structs field for field.
NATIVE = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")


def _decoder_fields() -> dict[str, set[str]]:
    """endpoint → the json tags of the struct the decoder reads it into."""
    source = SOURCE.read_text()
    structs = {
        name: set(re.findall(r'`json:"([^",]+)', body))
        for name, body in re.findall(r"type (\w+) struct \{(.*?)\n\}", source, re.S)
    }
    cases = re.findall(r'case "(/[^"]+)":\s+var r (\w+)', source)
    assert len(cases) >= 9, cases
    return {endpoint: structs[struct] for endpoint, struct in cases}


def _parse(path: str, body: dict[str, Any]) -> payload.Payload:
    raw = json.dumps(body, ensure_ascii=False).encode()
    request = AuthzRequest("POST", path, {"content-type": ["application/json"]}, raw)
    return payload.parse(request, embeddings="embed" in path)


def _refused(path: str, body: dict[str, Any]) -> int:
    with pytest.raises(payload.BadRequest) as raised:
        _parse(path, body)
    return raised.value.status


def test_every_field_ollama_reads_is_allowed_except_debug_switches() -> None:
    decoder = _decoder_fields()
    for endpoint, tags in decoder.items():
        if endpoint not in fields.FIELDS:
            continue  # /api/show: answered by authz, no inference
        assert tags - DEBUG <= fields.FIELDS[endpoint], endpoint
        if endpoint in NATIVE:
            assert fields.FIELDS[endpoint] == tags - DEBUG, endpoint
    assert set(fields.FIELDS) <= set(decoder)
    assert all(not name.startswith("_") for names in fields.FIELDS.values() for name in names)
    # The decoder copies the debug switch where Ollama has it: the test above is not vacuous.
    for endpoint in ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"):
        assert decoder[endpoint] >= DEBUG, endpoint


@pytest.mark.parametrize(
    "spelling", ["_debug_render_only", "_DEBUG_RENDER_ONLY", "_debug_thinking"]
)
@pytest.mark.parametrize("endpoint", sorted(fields.FIELDS))
def test_debug_and_undocumented_fields_are_refused(endpoint: str, spelling: str) -> None:
    assert _refused(endpoint, {"model": "m", spelling: True}) == 400
    assert _refused(endpoint, {"model": "m", "unheard_of": 1}) == 400


def test_documented_fields_in_odd_spellings_pass() -> None:
    parsed = _parse("/api/chat", {"MODEL": "m", "Keep_Alive": "5m", "\u017ftream": False})
    assert parsed.model == "m"


def test_options_allowlist_and_num_ctx() -> None:
    default = fields.DEFAULT_OPTIONS
    assert fields.options_allowed({"temperature": 0.1, "num_predict": 5}, default, None)
    assert not fields.options_allowed({"num_gpu": 99}, default, None)
    assert not fields.options_allowed({"NUM_GPU": 99}, default, None)  # Go matches map keys exactly
    assert not fields.options_allowed({"num_ctx": 2048}, default, None)  # no max_num_ctx: refused
    assert fields.options_allowed({"num_ctx": 2048}, default, 4096)
    assert not fields.options_allowed({"num_ctx": 4097}, default, 4096)
    assert not fields.options_allowed({"num_ctx": "4096"}, default, 4096)
    assert fields.options_allowed({"num_gpu": 1}, default | {"num_gpu"}, None)
    assert {"num_gpu", "main_gpu", "use_mmap", "num_thread", "num_batch"}.isdisjoint(default)


def test_option_names_are_checked() -> None:
    assert fields.check_option_names(["seed", "num_gpu", "seed"]) == ["seed", "num_gpu"]
    for bad in (["num_predict"], ["num_ctx"], ["low_vram_please"]):
        with pytest.raises(ValueError):
            fields.check_option_names(bad)
    assert fields.inert_options(" mock_a, num_gpu ,") == frozenset({"mock_a"})


def test_options_that_are_not_a_map_are_refused() -> None:
    assert _refused("/api/chat", {"model": "m", "options": [1]}) == 400


def test_the_estimate_is_at_least_the_utf8_bytes_of_the_text() -> None:
    text = "\u20ac" * 10_000  # 3 bytes each
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/api/chat", {"messages": [{"role": "user", "content": text}]}),
        ("/api/generate", {"prompt": text}),
        ("/api/generate", {"system": text}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}),
        ("/v1/responses", {"input": text}),
        ("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": text}]}),
        ("/api/chat", {"messages": [], "tools": [{"function": {"description": text}}]}),
    ]
    for path, body in cases:
        assert _parse(path, {"model": "m", **body}).prompt_estimate >= 30_000, (path, body)


def test_escaped_characters_count_as_go_writes_them() -> None:
    # Go's encoder writes "<" as \u003c: a tool schema of them reaches the template 6x longer.
    tools = [{"function": {"description": "<" * 1_000}}]
    assert _parse("/api/chat", {"model": "m", "tools": tools}).prompt_estimate >= 6_000


def test_each_context_id_is_a_token() -> None:
    parsed = _parse("/api/generate", {"model": "m", "prompt": "", "context": [7] * 50_000})
    assert parsed.prompt_estimate >= 50_000


def test_a_data_url_is_an_image_only_where_ollama_reads_an_image() -> None:
    text = "data:" + "x" * 30_000
    as_text = _parse("/v1/chat/completions", {"model": "m", "messages": [{"content": text}]})
    assert as_text.prompt_estimate >= 30_000


@pytest.mark.parametrize("depth", [payload.MAX_DEPTH + 1, 500])
def test_nesting_beyond_the_limit_is_refused(depth: int) -> None:
    nested: Any = "x" * 10
    for _ in range(depth):
        nested = [nested]
    assert _refused("/api/chat", {"model": "m", "messages": [{"content": nested}]}) == 400
    assert _refused("/api/chat", {"model": "m", "options": {"stop": nested}}) == 400


def test_nesting_within_the_limit_is_counted() -> None:
    nested: Any = "y" * 5_000
    for _ in range(payload.MAX_DEPTH - 3):
        nested = {"k": nested}
    parsed = _parse("/api/chat", {"model": "m", "tools": [{"function": {"parameters": nested}}]})
    assert parsed.prompt_estimate >= 5_000
