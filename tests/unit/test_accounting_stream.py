"""The stream account in plain Python: counts per API shape, rewriting, usage stripping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.stream import RequestInfo, StreamAccount
from gateway import rewrite


def account(endpoint: str, body: dict[str, Any], *, stream: bool, **meta: Any) -> StreamAccount:
    """An account for a request authz admitted; ``stream`` is authz's reading of the body (its
    ``stream`` metadata: Ollama's chat and generate stream unless told otherwise)."""
    info = RequestInfo.from_metadata(
        "req-1", {"endpoint": endpoint, "tenant_id": "t", "stream": stream, **meta}
    )
    acc = StreamAccount(info)
    acc.request_body(json.dumps(body).encode())
    return acc


def feed(acc: StreamAccount, status: int, chunks: list[bytes]) -> bytes:
    """Run the response through as accounting/server.py does (Envoy sends accounting no
    response headers: the status comes with the first body chunk); the bytes the client
    receives."""
    out = b""
    for i, chunk in enumerate(chunks):
        if not acc.started:
            acc.response_start(status, chunk)
        passed = acc.response_chunk(chunk, i == len(chunks) - 1)
        out += chunk if passed is None else passed
    return out


def sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


CHAT = {"model": "m", "messages": [{"role": "user", "content": "say hello to me"}]}


def native_stream(n: int, counts: bool = True, error_after: int | None = None) -> bytes:
    frames = [{"message": {"content": f" token{i}"}, "done": False} for i in range(n)]
    if error_after is not None:
        return b"".join(json.dumps(f).encode() + b"\n" for f in frames[:error_after]) + (
            b'{"error":"mock failure"}\n'
        )
    final: dict[str, Any] = {"message": {"content": ""}, "done": True}
    if counts:
        final.update(prompt_eval_count=4, eval_count=n)
    return b"".join(json.dumps(f).encode() + b"\n" for f in [*frames, final])


def test_native_stream_counts_from_the_final_frame() -> None:
    acc = account("/api/chat", CHAT, stream=True)
    feed(acc, 200, [native_stream(5)])
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (4, 5, False)


def test_missing_counts_are_estimated_and_marked() -> None:
    acc = account("/api/chat", CHAT, stream=True)
    feed(acc, 200, [native_stream(5, counts=False)])
    counts = acc.counts()
    assert counts.estimated
    assert counts.tokens_out == 5  # one token per content frame
    assert counts.tokens_in > 0


def test_error_frame_inside_a_200_stream_is_an_error() -> None:
    acc = account("/api/generate", {"model": "m", "prompt": "hi"}, stream=True)
    feed(acc, 200, [native_stream(5, error_after=2)])
    counts = acc.counts()
    assert counts.error == "mock failure"
    assert counts.tokens_out == 2 and counts.estimated


def test_cut_stream_is_debited_from_what_was_seen() -> None:
    acc = account("/api/chat", CHAT, stream=True)
    first = native_stream(10)[:200]
    acc.response_start(200, first)
    acc.response_chunk(first, False)
    outcome = acc.outcome(cut=True)
    assert outcome.cut and outcome.counts.estimated
    assert outcome.counts.tokens_out >= 1


def test_backend_error_status_costs_nothing() -> None:
    acc = account("/api/chat", CHAT, stream=True)
    feed(acc, 404, [b'{"error":"model not found"}'])
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out) == (0, 0)
    assert counts.error == "model not found"


def openai_chunks(n: int, usage: bool, completions: bool = False) -> list[bytes]:
    base: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk"}
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    chunks = []
    for i in range(n):
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}
        if completions and usage:
            chunk["usage"] = zero
        chunks.append(sse(chunk))
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if completions and usage:
        finish["usage"] = zero
    tail = sse(finish)
    if usage:
        total = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n}
        tail += sse({**base, "choices": [], "usage": total})
    return [*chunks, tail + b"data: [DONE]\n\n"]


@pytest.mark.parametrize("completions", [False, True], ids=["chat", "completions"])
def test_openai_stream_without_include_usage_is_counted_and_gets_no_usage(
    completions: bool,
) -> None:
    endpoint = "/v1/completions" if completions else "/v1/chat/completions"
    acc = account(endpoint, {**CHAT, "stream": True}, stream=True)
    assert acc.strip_usage
    seen = feed(acc, 200, openai_chunks(3, usage=True, completions=completions))
    assert seen == b"".join(openai_chunks(3, usage=False, completions=completions))
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (4, 3, False)


@settings(max_examples=100)
@given(cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8))
def test_usage_chunk_dropped_whatever_the_chunking(cuts: list[int]) -> None:
    data = b"".join(openai_chunks(4, usage=True, completions=True))
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    acc = account("/v1/completions", {**CHAT, "stream": True}, stream=True)
    seen = feed(acc, 200, chunks)
    assert seen == b"".join(openai_chunks(4, usage=False, completions=True))
    assert acc.counts().total == 8


def test_client_that_asked_for_usage_gets_it() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    acc = account("/v1/chat/completions", body, stream=True)
    assert not acc.strip_usage
    chunks = openai_chunks(2, usage=True)
    assert feed(acc, 200, chunks) == b"".join(chunks)


def test_openai_zero_usage_next_to_content_is_unknown() -> None:
    acc = account("/v1/chat/completions", {**CHAT, "stream": True}, stream=True)
    chunks = openai_chunks(3, usage=False)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    chunks[-1] = sse({"choices": [], "usage": zero}) + b"data: [DONE]\n\n"
    feed(acc, 200, chunks)
    counts = acc.counts()
    assert counts.estimated and counts.tokens_out == 3 and counts.tokens_in > 0


def test_responses_usage_from_the_completed_event() -> None:
    acc = account("/v1/responses", {"model": "m", "input": "hi there", "stream": True}, stream=True)
    events = [
        sse({"type": "response.created", "response": {"usage": None}}, "response.created"),
        sse({"type": "response.output_text.delta", "delta": "a"}, "response.output_text.delta"),
        sse(
            {
                "type": "response.completed",
                "response": {"usage": {"input_tokens": 2, "output_tokens": 7}},
            },
            "response.completed",
        ),
    ]
    feed(acc, 200, events)
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (2, 7, False)


def test_anthropic_messages_input_at_start_output_in_final_delta() -> None:
    acc = account("/v1/messages", {**CHAT, "max_tokens": 10, "stream": True}, stream=True)
    events = [
        sse(
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 4, "output_tokens": 0}},
            },
            "message_start",
        ),
        sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}),
        sse({"type": "message_delta", "usage": {"output_tokens": 6}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    feed(acc, 200, events)
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out) == (4, 6)


def test_anthropic_error_event() -> None:
    acc = account("/v1/messages", {**CHAT, "max_tokens": 10, "stream": True}, stream=True)
    error = {"type": "error", "error": {"type": "api_error", "message": "mock failure"}}
    feed(acc, 200, [sse(error, "error")])
    assert acc.counts().error == "mock failure"


def test_non_stream_json_bodies() -> None:
    acc = account("/api/embed", {"model": "e", "input": ["a b", "c"]}, stream=False)
    feed(acc, 200, [b'{"embeddings":[[0.1]],', b'"prompt_eval_count":3}'])
    assert (acc.counts().tokens_in, acc.counts().tokens_out) == (3, 0)
    acc = account("/v1/embeddings", {"model": "e", "input": "a b c"}, stream=False)
    body = {"object": "list", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    feed(acc, 200, [json.dumps(body).encode()])
    assert (acc.counts().tokens_in, acc.counts().tokens_out, acc.counts().estimated) == (
        3,
        0,
        False,
    )


# -- request rewriting ---------------------------------------------------------------------


def limits(endpoint: str, max_tokens: int = 100, low: int = 60, high: int = 1800) -> rewrite.Limits:
    return rewrite.Limits(endpoint, True, max_tokens, low, high)


def rewritten(endpoint: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = rewrite.rewrite(json.dumps(body).encode(), limits(endpoint, **kw))
    return body if result.body is None else dict(json.loads(result.body))


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0, 60), (-1, 1800), ("0s", 60), ("10m", None), ("2h", 1800), (300, None), ("bogus", 1800)],
)
def test_keep_alive_is_clamped(given: Any, expected: int | None) -> None:
    out = rewritten("/api/chat", {**CHAT, "keep_alive": given, "options": {"num_predict": 5}})
    assert out["keep_alive"] == (given if expected is None else expected)


def test_output_cap_native() -> None:
    assert rewritten("/api/chat", CHAT)["options"]["num_predict"] == 100
    big = {**CHAT, "options": {"num_predict": 5000, "temperature": 0}}
    assert rewritten("/api/chat", big)["options"] == {"num_predict": 100, "temperature": 0}
    assert rewritten("/api/chat", {**CHAT, "options": {"num_predict": -1}})["options"] == {
        "num_predict": 100
    }
    small = {**CHAT, "options": {"num_predict": 5}}
    assert rewrite.rewrite(json.dumps(small).encode(), limits("/api/chat")).body is None


def test_output_cap_openai_and_anthropic() -> None:
    assert rewritten("/v1/chat/completions", CHAT)["max_tokens"] == 100
    out = rewritten("/v1/chat/completions", {**CHAT, "max_completion_tokens": 7})
    assert (out["max_tokens"], out["max_completion_tokens"]) == (7, 7)
    out = rewritten("/v1/chat/completions", {**CHAT, "max_completion_tokens": 700})
    assert (out["max_tokens"], out["max_completion_tokens"]) == (100, 100)
    assert rewritten("/v1/messages", {**CHAT, "max_tokens": 4096})["max_tokens"] == 100
    assert rewritten("/v1/responses", {"model": "m", "input": "x"})["max_output_tokens"] == 100
    assert "max_tokens" not in rewritten("/api/embed", {"model": "e", "input": "x"})


def test_no_cap_when_authz_set_none() -> None:
    assert "options" not in rewritten("/api/chat", CHAT, max_tokens=0)


def test_include_usage_added_only_to_streams_without_it() -> None:
    out = rewritten("/v1/chat/completions", {**CHAT, "stream": True})
    assert out["stream_options"] == {"include_usage": True}
    out = rewritten("/v1/chat/completions", {**CHAT, "stream": False})
    assert "stream_options" not in out


def test_non_json_body_passes_unchanged() -> None:
    result = rewrite.rewrite(b"not json", limits("/api/chat"))
    assert result.body is None and not result.strip_usage


def test_a_whole_json_answer_in_chunks_is_counted() -> None:
    whole = {"message": {"content": "hi"}, "done": True, "prompt_eval_count": 7, "eval_count": 2}
    acc = account("/api/chat", {**CHAT, "stream": False}, stream=False)
    feed(acc, 200, [json.dumps(whole).encode()[:20], json.dumps(whole).encode()[20:]])
    assert (acc.counts().tokens_in, acc.counts().tokens_out) == (7, 2)


@pytest.mark.parametrize("status", [200, 400, 503])
def test_a_json_answer_to_a_stream_request_passes_unchanged(status: int) -> None:
    acc = account("/v1/chat/completions", {**CHAT, "stream": True}, stream=True)
    body = b'{"error": {"message": "nope", "type": "invalid_request_error"}}'
    assert feed(acc, status, [body[:10], body[10:]]) == body
    if status >= 400:
        assert (acc.counts().tokens_in, acc.counts().tokens_out) == (0, 0)


@pytest.mark.parametrize("lead", [b"", b"\n  "], ids=["bare", "after-whitespace"])
def test_a_whole_json_answer_to_an_openai_stream_request_is_counted_from_its_usage(
    lead: bytes,
) -> None:
    acc = account("/v1/chat/completions", {**CHAT, "stream": True}, stream=True)
    whole = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    body = lead + json.dumps(whole).encode()
    assert feed(acc, 200, [body[:7], body[7:]]) == body
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.estimated) == (4, 2, False)


def test_a_refusal_of_a_native_stream_request_is_one_json_value() -> None:
    acc = account("/api/chat", CHAT, stream=True)
    body = json.dumps({"error": 'model "m" not found'}, indent=2).encode()  # several lines
    feed(acc, 404, [body])
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.error) == (0, 0, 'model "m" not found')


@pytest.mark.parametrize("status", [500, 502])
def test_a_refusal_without_an_error_field_is_recorded_by_its_status(status: int) -> None:
    acc = account("/v1/chat/completions", {**CHAT, "stream": True}, stream=True)
    assert feed(acc, status, [b"upstream failure"]) == b"upstream failure"
    counts = acc.counts()
    assert (counts.tokens_in, counts.tokens_out, counts.error) == (0, 0, f"http {status}")
