"""The prompt estimate (authz/payload.py) to the token: what a request reserves of a budget is
``prompt_estimate + output cap``, so one token too few lets a tenant overspend and one too
many refuses a request that fits. Every expected value below is counted by hand from the
module's rule — text at its UTF-8 bytes as Go writes it (quotes and escapes included), keys
likewise plus a colon and a comma, braces and brackets, a number at 24 bytes, ``true``/
``false``/``null`` at 5, an image at 1024, a context id at 1, 16 per message, 64 per request —
never computed with the code under test."""

from __future__ import annotations

import pytest

from authz import payload
from authz.request import AuthzRequest

REQUEST = 64  # every request's template overhead


def estimate(path: str, raw: str) -> int:
    req = AuthzRequest("POST", path, {"content-type": ["application/json"]}, raw.encode())
    return payload.parse(req, embeddings="embed" in path).prompt_estimate


def refused(path: str, raw: str) -> int:
    req = AuthzRequest("POST", path, {"content-type": ["application/json"]}, raw.encode())
    with pytest.raises(payload.BadRequest) as raised:
        payload.parse(req, embeddings="embed" in path)
    return raised.value.status


def nest(levels: int, inner: str = "[]") -> str:
    """``levels`` lists, one inside the other, around ``inner`` (``[]`` is itself a level)."""
    if inner == "[]":
        return "[" * levels + "]" * levels
    return "[" * levels + inner + "]" * levels


def test_a_request_with_nothing_to_read_costs_the_template_only() -> None:
    assert estimate("/api/chat", '{"model": "m"}') == REQUEST


@pytest.mark.parametrize(
    ("text", "cost"),
    [
        ('""', 2),  # the quotes
        ('"hi"', 4),
        ('"h\u00e9llo"', 8),  # é is 2 bytes in UTF-8
        ('"\u65e5\u672c"', 8),  # 3 bytes each
        ('"\U0001f600"', 6),  # 4 bytes
        (r'"a\"b"', 10),  # " is escaped by Go: up to 6 bytes
        (r'"a\\b"', 10),
        ('"<>&"', 20),  # Go escapes HTML characters as \u003c
        (r'"\n"', 8),
        (r'"\u0000"', 8),
        (r'"\u001f"', 8),
        ('" "', 3),  # the first character Go does not escape
        (r'"\u2028"', 10),  # Go escapes the JavaScript line separators
        (r'"\u2029"', 10),
        (r'"\u202a"', 5),  # its neighbour it does not
        (r'"\ud800"', 5),  # a lone surrogate: the 3 bytes Go writes for it
        ('"XX"', 4),
    ],
)
def test_text_costs_its_bytes_as_go_writes_them(text: str, cost: int) -> None:
    assert estimate("/api/generate", '{"model": "m", "prompt": ' + text + "}") == REQUEST + cost


@pytest.mark.parametrize(
    ("value", "cost"),
    [
        ("1", 24),  # the longest float64 Go writes
        ("1.5", 24),
        ("-7", 24),
        ("true", 5),
        ("false", 5),
        ("null", 5),
        ("{}", 2),
        ('{"a": "b"}', 2 + 2 + 3 + 3),  # braces, colon and comma, key, value
        ('{"a": 1, "bb": null}', 2 + 4 + (3 + 24) + (4 + 5)),
        ("[]", 2),
        ('["a"]', 2 + 1 + 3),  # brackets, a comma per item, the item
        ("[1, true]", 2 + 2 + 24 + 5),
        ("[{}]", 2 + 1 + 2),  # no message overhead outside messages
        ('{"x": [{"y": false}]}', 2 + 2 + 3 + (2 + 1 + (2 + 2 + 3 + 5))),
    ],
)
def test_structured_values_cost_their_json_text(value: str, cost: int) -> None:
    assert estimate("/api/chat", '{"model": "m", "format": ' + value + "}") == REQUEST + cost


def test_fields_as_go_matches_them_cost_the_same() -> None:
    assert estimate("/api/chat", '{"model": "m", "FORMAT": [1]}') == REQUEST + 2 + 1 + 24
    assert estimate("/api/chat", '{"model": "m", "Think": true}') == REQUEST + 5


def test_each_message_adds_its_template_overhead() -> None:
    one = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    # list 2 + 1; object 2 + 2·2; "role" 6, "user" 6, "content" 9, "hi" 4; one message 16
    assert estimate("/api/chat", one) == REQUEST + 3 + 6 + 6 + 6 + 9 + 4 + 16
    mixed = '{"model": "m", "MESSAGES": [{"content": "a"}, "x", {}]}'
    # list 2 + 3; {"content": "a"} 2 + 2 + 9 + 3; "x" 3; {} 2; two of them are messages
    assert estimate("/api/chat", mixed) == REQUEST + 5 + 16 + 3 + 2 + 2 * 16


def test_responses_input_is_messages_when_it_is_a_list() -> None:
    listed = '{"model": "m", "input": [{"content": "a"}]}'
    assert estimate("/v1/responses", listed) == REQUEST + (2 + 1 + 16) + 16
    assert estimate("/v1/responses", '{"model": "m", "input": "abc"}') == REQUEST + 5
    assert estimate("/v1/responses", '{"model": "m", "instructions": "abc"}') == REQUEST + 5


@pytest.mark.parametrize(
    ("images", "cost"),
    [
        ('["aaaa", "bb"]', 2 * 1024 + 2),  # each image its bounded cost, not its base64
        ('["' + "A" * 5000 + '"]', 1024 + 2),
        ("[]", 2),
        ('"abc"', 1024),
        ("[1]", 2 + 1 + 24),  # not images: counted as what it is
        ('["a", 1]', 2 + 2 + 3 + 24),
        ('{"url": "x"}', 1024 + 2),
        ('{"URL": "x"}', 1024 + 2),  # as Go matches the field
        ('{"data": "x"}', 1024 + 2),
        ('{"data": 5, "url": "x"}', 1024 + 2),
        ('{"data": "x", "url": 5}', 1024 + 2),
        ('{"url": 5}', 2 + 2 + 5 + 24),
        ("{}", 2),
        ("7", 24),
    ],
)
def test_native_images_cost_a_bounded_number_of_tokens(images: str, cost: int) -> None:
    assert estimate("/api/generate", '{"model": "m", "images": ' + images + "}") == REQUEST + cost


def test_images_inside_messages_cost_a_bounded_number_of_tokens() -> None:
    native = '{"model": "m", "messages": [{"images": ["' + "Q" * 4000 + '"]}]}'
    # list 3; object 2 + 2; "images" 8; one image 1024 + 2; one message 16
    assert estimate("/api/chat", native) == REQUEST + 3 + 4 + 8 + 1026 + 16
    folded = '{"model": "m", "messages": [{"Images": ["Q"]}]}'
    assert estimate("/api/chat", folded) == REQUEST + 3 + 4 + 8 + 1026 + 16


def test_openai_image_urls_cost_a_bounded_number_of_tokens() -> None:
    part = '{"type": "image_url", "image_url": {"url": "data:image/png;base64,' + "Q" * 4000
    raw = '{"model": "m", "messages": [{"content": [' + part + '"}}]}]}'
    # part: 2 + 4, "type" 6, "image_url" 11, "image_url" 11, the image 1026
    # content list 3; message 2 + 2 + "content" 9; messages list 3; one message 16
    cost = (6 + 6 + 11 + 11 + 1026) + 3 + (4 + 9) + 3 + 16
    assert estimate("/v1/chat/completions", raw) == REQUEST + cost
    bare = '{"model": "m", "messages": [{"image_url": "data:x"}]}'
    assert estimate("/v1/chat/completions", bare) == REQUEST + 3 + 4 + 11 + 1024 + 16


def test_anthropic_image_sources_cost_a_bounded_number_of_tokens() -> None:
    source = '{"type": "base64", "data": "' + "Q" * 4000 + '"}'
    raw = '{"model": "m", "messages": [{"content": [{"type": "image", "source": ' + source
    raw += "}]}]}"
    # part: 2 + 4, "type" 6, "image" 7, "source" 8, the image 1026
    cost = (6 + 6 + 7 + 8 + 1026) + 3 + (4 + 9) + 3 + 16
    assert estimate("/v1/messages", raw) == REQUEST + cost


@pytest.mark.parametrize(
    ("context", "cost"),
    [
        ("[]", 0),
        ("[1, 2, 3]", 3),  # one token per id
        ("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", 10),
        ('[1, "ab"]', 1 + 4),  # anything else at its JSON cost
        ("[1.5]", 24),
        ('"abc"', 5),  # not a list: its JSON cost
    ],
)
def test_context_ids_cost_one_token_each(context: str, cost: int) -> None:
    raw = '{"model": "m", "context": ' + context + "}"
    assert estimate("/api/generate", raw) == REQUEST + cost
    folded = '{"model": "m", "CONTEXT": ' + context + "}"
    assert estimate("/api/generate", folded) == REQUEST + cost


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "max_tokens", "100"),
        ("/v1/chat/completions", "max_completion_tokens", "100"),
        ("/v1/completions", "max_tokens", "100"),
        ("/v1/responses", "max_output_tokens", "100"),
        ("/v1/messages", "max_tokens", "100"),
        ("/api/chat", "stream", "true"),
        ("/api/chat", "options", '{"temperature": 0.5, "stop": ["a long stop"]}'),
        ("/api/chat", "keep_alive", '"5m"'),
        ("/v1/chat/completions", "stream_options", '{"include_usage": true}'),
        ("/v1/chat/completions", "temperature", "0.5"),
        ("/v1/chat/completions", "top_p", "0.5"),
        ("/v1/messages", "top_k", "40"),
        ("/v1/chat/completions", "seed", "42"),
        ("/v1/chat/completions", "stop", '["a long stop sequence"]'),
        ("/v1/messages", "stop_sequences", '["a long stop sequence"]'),
        ("/v1/chat/completions", "frequency_penalty", "0.5"),
        ("/v1/chat/completions", "presence_penalty", "0.5"),
        ("/v1/chat/completions", "n", "1"),
        ("/api/chat", "logprobs", "true"),
        ("/api/chat", "top_logprobs", "5"),
        ("/api/chat", "truncate", "true"),
        ("/api/chat", "shift", "true"),
        ("/api/generate", "raw", "true"),
        ("/api/embed", "dimensions", "256"),
        ("/v1/chat/completions", "user", '"some user id"'),
        ("/v1/embeddings", "encoding_format", '"float"'),
        ("/v1/chat/completions", "metadata", '{"a": "b"}'),
        ("/v1/chat/completions", "logit_bias", '{"50256": -100}'),
        ("/v1/chat/completions", "store", "false"),
        ("/v1/chat/completions", "service_tier", '"auto"'),
        ("/v1/completions", "best_of", "1"),
        ("/v1/completions", "echo", "false"),
        ("/v1/chat/completions", "parallel_tool_calls", "true"),
        ("/v1/responses", "background", "false"),
        ("/v1/chat/completions", "TEMPERATURE", "0.5"),  # as Go matches the field
    ],
)
def test_fields_that_never_reach_the_prompt_cost_nothing(path: str, field: str, value: str) -> None:
    assert estimate(path, '{"model": "m", "' + field + '": ' + value + "}") == REQUEST


def test_nesting_up_to_the_limit_is_read_and_one_level_more_is_refused() -> None:
    assert payload.MAX_DEPTH == 64
    # 64 lists: the outermost at depth 0, the innermost at 63; each level adds 2 + 1.
    assert estimate("/api/chat", '{"model": "m", "format": ' + nest(64) + "}") == REQUEST + 191
    assert refused("/api/chat", '{"model": "m", "format": ' + nest(65) + "}") == 400
    # Text at depth 64 is text: only containers that deep are refused.
    deep_text = nest(64, '"x"')
    assert estimate("/api/chat", '{"model": "m", "format": ' + deep_text + "}") == REQUEST + 195
    # 64 objects: {} 2, each level around it 2 + 2 + "a" 3.
    objects = '{"a": ' * 63 + "{}" + "}" * 63
    assert estimate("/api/chat", '{"model": "m", "format": ' + objects + "}") == REQUEST + 443
    deeper = '{"a": ' * 64 + "{}" + "}" * 64
    assert refused("/api/chat", '{"model": "m", "format": ' + deeper + "}") == 400


def test_the_nesting_limit_holds_for_context_and_images_too() -> None:
    # A context item sits at depth 1: 63 more levels inside it are read, 64 refused.
    inside = '{"model": "m", "context": [' + nest(63) + "]}"
    assert estimate("/api/generate", inside) == REQUEST + (3 * 63 - 1)
    assert refused("/api/generate", '{"model": "m", "context": [' + nest(64) + "]}") == 400
    # Top-level images that are not images: read from depth 0.
    assert estimate("/api/generate", '{"model": "m", "images": ' + nest(64) + "}") == REQUEST + 191
    assert refused("/api/generate", '{"model": "m", "images": ' + nest(65) + "}") == 400
    # An images field inside an object sits one level below it.
    inner = '{"model": "m", "format": {"images": ' + nest(63) + "}}"
    assert estimate("/api/chat", inner) == REQUEST + 2 + 2 + 8 + (3 * 63 - 1)
    too_deep = '{"model": "m", "format": {"images": ' + nest(64) + "}}"
    assert refused("/api/chat", too_deep) == 400
