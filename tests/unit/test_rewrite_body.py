"""The body the backend gets (gateway/rewrite.py): the output cap authz reserved budget for,
``stream_options.include_usage`` on the streams that count tokens only when asked, and a body
that is not a JSON object passed on untouched. Every expected body is written out by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import rewrite

CAP = 100


def limits(endpoint: str, cap: int = CAP) -> rewrite.Limits:
    return rewrite.Limits(endpoint, True, cap, None, None)


def sent(endpoint: str, body: dict[str, Any], cap: int = CAP) -> dict[str, Any] | None:
    """The body the backend gets; None when the client's passes unchanged."""
    out = rewrite.rewrite(json.dumps(body).encode(), limits(endpoint, cap))
    return None if out.body is None else dict(json.loads(out.body))


# -- the output cap ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        # Ollama's native routes: options.num_predict (a map key: matched exactly)
        ("/api/chat", {"model": "m"}, {"model": "m", "options": {"num_predict": 100}}),
        ("/api/generate", {"model": "m"}, {"model": "m", "options": {"num_predict": 100}}),
        (
            "/api/chat",
            {"model": "m", "options": {"num_predict": 5000, "temperature": 0}},
            {"model": "m", "options": {"num_predict": 100, "temperature": 0}},
        ),
        ("/api/chat", {"model": "m", "options": {"num_predict": 7}}, None),
        ("/api/chat", {"model": "m", "options": {"num_predict": 100}}, None),
        ("/api/chat", {"model": "m", "options": {"num_predict": 100.0}}, None),
        (
            "/api/chat",
            {"model": "m", "options": {"num_predict": 101}},
            {"model": "m", "options": {"num_predict": 100}},
        ),
        # -1 (no limit), -2 (fill the context), 0: no cap asked, so the reserved one
        *(
            (
                "/api/generate",
                {"model": "m", "options": {"num_predict": asked}},
                {"model": "m", "options": {"num_predict": 100}},
            )
            for asked in (-1, -2, 0, 0.0, True, "7", None)
        ),
        # options that are not an object: replaced by one with the cap
        *(
            (
                "/api/chat",
                {"model": "m", "options": junk},
                {"model": "m", "options": {"num_predict": 100}},
            )
            for junk in (None, "x", 3, [1])
        ),
        # Go matches "Options" to the field; the map's keys exactly: another spelling goes
        (
            "/api/chat",
            {"model": "m", "Options": {"num_predict": 700, "top_k": 1}},
            {"model": "m", "options": {"num_predict": 100, "top_k": 1}},
        ),
        ("/api/chat", {"model": "m", "Options": {"num_predict": 7}}, None),
        # Ollama ignores a map key spelled otherwise: the cap must land in num_predict
        (
            "/api/chat",
            {"model": "m", "options": {"NUM_PREDICT": 100}},
            {"model": "m", "options": {"num_predict": 100}},
        ),
        (
            "/api/chat",
            {"model": "m", "options": {"Num_Predict": 7}},
            {"model": "m", "options": {"num_predict": 100}},
        ),
        # OpenAI's completions, Anthropic's messages, OpenAI's responses: one field each
        ("/v1/completions", {"model": "m"}, {"model": "m", "max_tokens": 100}),
        ("/v1/completions", {"model": "m", "max_tokens": 7}, None),
        ("/v1/completions", {"model": "m", "max_tokens": 1}, None),
        ("/v1/completions", {"model": "m", "max_tokens": 700}, {"model": "m", "max_tokens": 100}),
        ("/v1/completions", {"model": "m", "max_tokens": 0}, {"model": "m", "max_tokens": 100}),
        ("/v1/completions", {"model": "m", "max_tokens": -5}, {"model": "m", "max_tokens": 100}),
        ("/v1/completions", {"model": "m", "max_tokens": True}, {"model": "m", "max_tokens": 100}),
        ("/v1/messages", {"model": "m", "max_tokens": 4096}, {"model": "m", "max_tokens": 100}),
        ("/v1/responses", {"model": "m"}, {"model": "m", "max_output_tokens": 100}),
        (
            "/v1/responses",
            {"model": "m", "max_output_tokens": 8000},
            {"model": "m", "max_output_tokens": 100},
        ),
        # a struct field: Go matches any spelling; the cap leaves under the canonical one
        ("/v1/completions", {"model": "m", "MAX_TOKENS": 7}, None),
        ("/v1/completions", {"model": "m", "Max_Tokens": 700}, {"model": "m", "max_tokens": 100}),
        # chat completions: max_completion_tokens supersedes max_tokens; both get one value
        ("/v1/chat/completions", {"model": "m"}, {"model": "m", "max_tokens": 100}),
        (
            "/v1/chat/completions",
            {"model": "m", "max_completion_tokens": 7},
            {"model": "m", "max_completion_tokens": 7, "max_tokens": 7},
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "max_completion_tokens": 700},
            {"model": "m", "max_completion_tokens": 100, "max_tokens": 100},
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "max_completion_tokens": 50, "max_tokens": 7},
            {"model": "m", "max_completion_tokens": 7, "max_tokens": 7},
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "max_completion_tokens": 7, "max_tokens": 50},
            {"model": "m", "max_completion_tokens": 7, "max_tokens": 7},
        ),
        ("/v1/chat/completions", {"model": "m", "max_completion_tokens": 7, "max_tokens": 7}, None),
        (
            "/v1/chat/completions",
            {"model": "m", "max_completion_tokens": 0, "max_tokens": 7},
            {"model": "m", "max_completion_tokens": 7, "max_tokens": 7},
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "Max_Completion_Tokens": 700},
            {"model": "m", "max_completion_tokens": 100, "max_tokens": 100},
        ),
        # no output, no cap: embeddings, and a path that is no endpoint
        ("/api/embed", {"model": "e", "input": "x"}, None),
        ("/v1/embeddings", {"model": "e", "input": "x"}, None),
        ("/not/an/endpoint", {"model": "m", "max_tokens": 5000}, None),
    ],
)
def test_the_output_cap_is_the_smaller_of_the_reserved_and_the_asked(
    endpoint: str, body: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    assert sent(endpoint, body) == expected


@pytest.mark.parametrize("cap", [0, -1])
@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/api/chat", {"model": "m"}),
        ("/api/chat", {"model": "m", "options": {"num_predict": 5000}}),
        ("/v1/completions", {"model": "m", "max_tokens": 5000}),
        ("/v1/chat/completions", {"model": "m", "max_completion_tokens": 5000}),
    ],
)
def test_no_cap_when_authz_reserved_none(endpoint: str, cap: int, body: dict[str, Any]) -> None:
    assert sent(endpoint, body, cap) is None


def test_a_cap_of_one_token_is_applied() -> None:
    assert sent("/v1/completions", {"model": "m", "max_tokens": 2}, cap=1) == {
        "model": "m",
        "max_tokens": 1,
    }


# -- include_usage -----------------------------------------------------------------------------


def rewritten(endpoint: str, body: dict[str, Any]) -> rewrite.Rewrite:
    return rewrite.rewrite(json.dumps(body).encode(), limits(endpoint, 0))


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "m", "stream": True},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "Stream": True},
            {"model": "m", "Stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "stream": True, "stream_options": None},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "stream": True, "stream_options": "yes"},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": False}},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": "true"}},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"model": "m", "stream": True, "Stream_Options": {"Include_Usage": False, "x": 1}},
            {"model": "m", "stream": True, "stream_options": {"x": 1, "include_usage": True}},
        ),
    ],
)
def test_a_stream_that_counts_only_when_asked_asks_and_the_client_loses_the_chunk(
    endpoint: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    out = rewritten(endpoint, body)
    assert out.strip_usage is True
    assert out.body is not None and json.loads(out.body) == expected


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        # the client asked already: it keeps its usage chunk
        (
            "/v1/chat/completions",
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            "/v1/completions",
            {"model": "m", "stream": True, "Stream_Options": {"INCLUDE_USAGE": True}},
        ),
        # not a stream (only true is)
        ("/v1/chat/completions", {"model": "m"}),
        ("/v1/chat/completions", {"model": "m", "stream": False}),
        ("/v1/chat/completions", {"model": "m", "stream": 1}),
        ("/v1/chat/completions", {"model": "m", "stream": "true"}),
        # streams that carry their counts unasked
        ("/api/chat", {"model": "m", "stream": True}),
        ("/v1/responses", {"model": "m", "stream": True}),
        ("/v1/messages", {"model": "m", "stream": True}),
        ("/not/an/endpoint", {"model": "m", "stream": True}),
    ],
)
def test_include_usage_is_not_added_where_not_needed(endpoint: str, body: dict[str, Any]) -> None:
    assert rewritten(endpoint, body) == rewrite.Rewrite(None, False)


def test_a_capped_stream_that_already_asked_for_usage_keeps_its_chunk() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    out = rewrite.rewrite(json.dumps(body).encode(), limits("/v1/chat/completions"))
    assert out.strip_usage is False
    assert out.body is not None and json.loads(out.body) == {**body, "max_tokens": 100}


def test_apply_reports_what_changed() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    changes = rewrite.apply(body, rewrite.Limits("/v1/completions", True, 100, 60, 1800))
    assert changes == rewrite.Changes(changed=True, strip_usage=True)
    assert body == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
    }
    unchanged: dict[str, Any] = {"model": "m", "max_tokens": 5, "keep_alive": 300}
    same = rewrite.apply(unchanged, rewrite.Limits("/v1/completions", False, 100, 60, 1800))
    assert same == rewrite.Changes(changed=False, strip_usage=False)
    assert unchanged == {"model": "m", "max_tokens": 5, "keep_alive": 300}


def test_a_keep_alive_clamp_alone_is_a_change() -> None:
    body: dict[str, Any] = {"model": "m", "keep_alive": 0}
    changes = rewrite.apply(body, rewrite.Limits("/v1/embeddings", False, 100, 60, 1800))
    assert changes == rewrite.Changes(changed=True, strip_usage=False)
    assert body == {"model": "m", "keep_alive": 60}


# -- the bytes ---------------------------------------------------------------------------------


def test_the_new_body_is_utf8_json_with_the_text_as_sent() -> None:
    raw = '{"model": "m", "prompt": "Grüße 🌍", "options": {"num_predict": 500}}'.encode()
    out = rewrite.rewrite(raw, limits("/api/generate"))
    expected = '{"model": "m", "prompt": "Grüße 🌍", "options": {"num_predict": 100}}'
    assert out == rewrite.Rewrite(expected.encode("utf-8"), False)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"model": "m"',
        b'{"model": "m\xff"}',  # broken UTF-8
        b'{"model": "m", "MODEL": "n"}',  # two keys Go reads as one
        b'{"model": "m", "max_tokens": NaN}',
        b'{"model": "m", "max_tokens": 1e400}',
        b"[" * 100_000 + b"]" * 100_000,  # nested too deep to read
        b'["model", "m"]',
        b'"model"',
        b"null",
        b"42",
    ],
)
def test_a_body_that_is_not_a_json_object_passes_unchanged(raw: bytes) -> None:
    assert rewrite.rewrite(raw, limits("/v1/completions")) == rewrite.Rewrite(None, False)
