"""Token counts from the ``/v1/*`` shapes (accounting/tally.py): OpenAI chat and completions
chunks, the Responses API's events, Anthropic's messages events, and their whole JSON bodies.
What a tenant is charged comes from their usage; without one it is estimated and marked so.
Every expected value is written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from accounting.tally import Counts, Tally

ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def tally(*values: Any, prompt_estimate: int = 0) -> Tally:
    """A tally fed stream events: each a JSON value, or a (JSON value, SSE event name) pair."""
    t = Tally(prompt_estimate)
    for value in values:
        if isinstance(value, tuple):
            t.openai(value[0], value[1])
        else:
            t.openai(value)
    return t


def whole(value: Any, prompt_estimate: int = 0) -> Tally:
    t = Tally(prompt_estimate)
    t.openai(value, whole=True)
    return t


def delta(content: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}],
    }


# -- OpenAI chat / completions streams -----------------------------------------------------


def test_a_chat_stream_is_charged_the_usage_of_its_usage_chunk() -> None:
    t = tally(delta("Hel"), delta("lo"))
    assert t.final is False
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    t.openai(finish)
    assert t.final is False
    t.openai(usage)
    assert t.result() == Counts(9, 2, estimated=False, error=None, final=True)
    assert t.completion == "Hello"


def test_a_usage_chunk_without_a_choices_field_ends_the_stream() -> None:
    t = tally(delta("a"), {"usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    assert t.result() == Counts(3, 1, estimated=False, error=None, final=True)


def test_the_zero_usage_on_every_completions_chunk_does_not_end_the_stream() -> None:
    chunk = {"object": "text_completion", "choices": [{"index": 0, "text": "ab"}], "usage": ZERO}
    t = tally(chunk, chunk)
    assert t.final is False
    # Zero next to content is unknown: two content frames, two tokens.
    assert t.result() == Counts(0, 2, estimated=True, error=None, final=False)
    t.openai({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    assert t.result() == Counts(4, 2, estimated=False, error=None, final=True)
    assert t.completion == "abab"


def test_a_stream_without_usage_is_estimated() -> None:
    t = tally(delta("a"), delta("b"), delta("c"), prompt_estimate=7)
    assert t.result() == Counts(7, 3, estimated=True, error=None, final=False)


def test_a_chunk_with_several_choices_counts_each() -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {"content": "a"}},
            {"index": 1, "delta": {"content": "b"}},
        ]
    }
    t = tally(chunk)
    assert t.completion == "ab"
    assert t.result() == Counts(0, 2, estimated=True, error=None, final=False)


def test_a_choice_that_is_no_object_is_skipped() -> None:
    t = tally({"choices": ["junk", None, {"index": 0, "delta": {"content": "ok"}}]})
    assert t.completion == "ok"
    assert t.result() == Counts(0, 1, estimated=True, error=None, final=False)


@pytest.mark.parametrize(
    ("choice", "completion"),
    [
        ({"delta": {"content": "abc"}}, "abc"),
        ({"message": {"content": "abc"}}, "abc"),
        ({"delta": {}, "message": {"content": "abc"}}, "abc"),  # an empty delta: the message
        ({"text": "abc"}, "abc"),  # /v1/completions
        ({"delta": {}, "text": "abc"}, "abc"),
        ({"delta": {"content": None}, "text": "abc"}, "abc"),
        ({"delta": {"content": 5}, "text": "abc"}, "abc"),
        ({"delta": "abc"}, ""),  # a delta that is no object: no text in it
        ({"delta": {"content": ""}, "text": "abc"}, ""),  # an empty text is the text
    ],
)
def test_the_text_of_a_choice(choice: dict[str, Any], completion: str) -> None:
    assert tally({"choices": [choice]}).completion == completion


def test_reasoning_in_a_delta_is_generated_output() -> None:
    t = tally({"choices": [{"delta": {"content": "", "reasoning": "let me think"}}]})
    # One frame of 12 characters: (12 + 3) // 4 = 3 tokens, none of them the completion.
    assert t.result() == Counts(0, 3, estimated=True, error=None, final=False)
    assert t.completion == ""


def test_tool_calls_in_a_delta_are_generated_output() -> None:
    calls = [{"index": 0, "function": {"arguments": "{}"}}]
    # "[{'index': 0, 'function': {'arguments': '{}'}}]" is 47 characters: (47 + 3) // 4 = 12.
    t = tally({"choices": [{"delta": {"tool_calls": calls}}]})
    assert t.result() == Counts(0, 12, estimated=True, error=None, final=False)


def test_a_delta_that_is_no_object_carries_no_reasoning() -> None:
    t = tally({"choices": [{"delta": "x" * 40}]}, {"choices": [], "usage": ZERO})
    assert t.result() == Counts(0, 0, estimated=False, error=None, final=True)


def test_a_chunk_with_choices_is_not_read_as_an_event() -> None:
    value = {"type": "response.output_text.delta", "delta": "xyz", "choices": []}
    t = tally(value)
    assert t.completion == ""
    assert t.result() == Counts(0, 0, estimated=True, error=None, final=False)


# -- whole JSON bodies ---------------------------------------------------------------------


def test_a_whole_chat_body_is_charged_its_usage() -> None:
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    t = whole(body)
    assert t.result() == Counts(4, 2, estimated=False, error=None, final=True)
    assert t.completion == "hi there"


def test_a_whole_body_without_usage_is_final_and_estimated_by_size() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello world!"}}]}
    # One body of 12 characters: (12 + 3) // 4 = 3 tokens.
    assert whole(body, prompt_estimate=5).result() == Counts(
        5, 3, estimated=True, error=None, final=True
    )


def test_a_whole_embeddings_body_generates_nothing() -> None:
    body = {"object": "list", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    assert whole(body).result() == Counts(3, 0, estimated=False, error=None, final=True)


def test_a_value_that_is_no_object_is_ignored() -> None:
    for value in ("error", ["error"], None, 7):
        t = Tally(2)
        t.openai(value, "error", whole=True)
        assert t.result() == Counts(2, 0, estimated=True, error=None, final=False)


# -- usage fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "tokens_in", "tokens_out", "estimated"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4}, 3, 4, False),
        ({"input_tokens": 3, "output_tokens": 4}, 3, 4, False),
        (
            {"prompt_tokens": 3, "input_tokens": 9, "completion_tokens": 4, "output_tokens": 8},
            3,
            4,
            False,
        ),
        ({"prompt_tokens": 4, "total_tokens": 10}, 4, 6, False),  # output = total - prompt
        ({"input_tokens": 4, "total_tokens": 10}, 4, 6, False),
        ({"prompt_tokens": 4, "total_tokens": 3}, 4, 0, False),  # never negative
        ({"prompt_tokens": 4, "total_tokens": 4}, 4, 0, False),
        ({"prompt_tokens": 4, "total_tokens": "10"}, 4, 0, True),  # no number: unknown
        ({"prompt_tokens": 4, "total_tokens": None}, 4, 0, True),
        ({"prompt_tokens": 4}, 4, 0, True),
        ({"total_tokens": 10}, 5, 0, True),  # no prompt count: the total says nothing
        ({"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 10}, 4, 1, False),
        ({"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 10}, 4, 0, False),
        ({}, 5, 0, True),
    ],
)
def test_the_usage_fields_that_count(
    usage: dict[str, Any], tokens_in: int, tokens_out: int, estimated: bool
) -> None:
    t = tally({"choices": [], "usage": usage}, prompt_estimate=5)
    assert t.result() == Counts(tokens_in, tokens_out, estimated=estimated, error=None, final=True)


def test_a_later_usage_without_a_count_keeps_the_earlier_count() -> None:
    t = tally({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    t.openai({"choices": [], "usage": {"prompt_tokens": "?", "completion_tokens": None}})
    assert t.result() == Counts(3, 5, estimated=False, error=None, final=True)


def test_a_usage_that_is_no_object_is_no_usage() -> None:
    t = tally({"choices": [], "usage": [3, 4]}, prompt_estimate=2)
    assert t.result() == Counts(2, 0, estimated=True, error=None, final=False)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"error": {"message": "bad request", "type": "invalid_request_error"}}, "bad request"),
        ({"error": {"type": "invalid_request_error", "code": "c1"}}, "invalid_request_error"),
        ({"error": {"code": "c1"}}, "c1"),
        ({"error": {"message": "", "code": "c1"}}, "c1"),
        ({"error": {}}, "error"),
        ({"error": "plain words"}, "plain words"),
        ({"error": ""}, "error"),
        ({"type": "error", "error": {"type": "api_error", "message": "overloaded"}}, "overloaded"),
        ({"type": "error", "message": "bare"}, "bare"),
    ],
)
def test_an_error_value_records_its_text(value: dict[str, Any], error: str) -> None:
    assert tally(value).result().error == error


def test_an_error_event_named_by_the_sse_event_line() -> None:
    assert tally(({"message": "overloaded"}, "error")).result().error == "overloaded"
    assert tally(({"code": "E42"}, "error")).result().error == "E42"


def test_the_type_field_wins_over_the_event_line() -> None:
    t = tally(({"type": "content_block_delta", "delta": {"text": "hi"}}, "error"))
    assert t.result().error is None
    assert t.completion == "hi"


def test_a_type_that_is_no_string_leaves_the_event_line() -> None:
    t = tally(({"type": 5, "delta": "hi"}, "response.output_text.delta"))
    assert t.completion == "hi"


def test_an_error_that_is_null_is_no_error() -> None:
    t = tally({"error": None, "choices": [{"delta": {"content": "ok"}}]})
    assert t.result() == Counts(0, 1, estimated=True, error=None, final=False)
    assert t.completion == "ok"


def test_an_error_value_counts_nothing_else() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    value = {"error": {"message": "m"}, "choices": [{"delta": {"content": "abc"}}], "usage": usage}
    t = tally(value, prompt_estimate=2)
    assert t.result() == Counts(2, 0, estimated=True, error="m", final=False)
    assert t.completion == ""
    t = tally({"type": "error", "message": "m", "usage": usage}, prompt_estimate=2)
    assert t.result() == Counts(2, 0, estimated=True, error="m", final=False)


def test_a_failed_response_records_its_error_and_nothing_else() -> None:
    failed = {
        "type": "response.failed",
        "response": {"error": {"code": "server_error", "message": "model crashed"}},
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    t = tally(failed, prompt_estimate=2)
    assert t.result() == Counts(2, 0, estimated=True, error="model crashed", final=False)


@pytest.mark.parametrize("response", [None, "x", {}, {"error": None}])
def test_a_failed_response_without_detail_is_an_error(response: Any) -> None:
    t = tally({"type": "response.failed", "response": response})
    assert t.result().error == "error"


# -- the Responses API ---------------------------------------------------------------------


def test_a_responses_stream_is_charged_the_usage_of_its_completed_event() -> None:
    events = [
        ({"type": "response.created", "response": {"usage": None}}, "response.created"),
        ({"type": "response.output_text.delta", "delta": "ab"}, "response.output_text.delta"),
        ({"type": "response.output_text.delta", "delta": "c"}, "response.output_text.delta"),
    ]
    t = tally(*events)
    assert t.final is False
    assert t.completion == "abc"
    completed = {
        "type": "response.completed",
        "usage": {"input_tokens": 90, "output_tokens": 90},  # not where the Responses API puts it
        "response": {"usage": {"input_tokens": 2, "output_tokens": 7}},
    }
    t.openai(completed, "response.completed")
    assert t.result() == Counts(2, 7, estimated=False, error=None, final=True)


@pytest.mark.parametrize("response", [None, "x", {"usage": None}, {"usage": [2, 7]}])
def test_a_completed_event_without_usage_leaves_the_stream_open(response: Any) -> None:
    completed = {"type": "response.completed", "response": response}
    t = tally({"type": "response.output_text.delta", "delta": "abc"}, completed, prompt_estimate=3)
    assert t.result() == Counts(3, 1, estimated=True, error=None, final=False)


@pytest.mark.parametrize(
    "kind", ["response.reasoning_text.delta", "response.function_call_arguments.delta"]
)
def test_reasoning_and_call_arguments_are_generated_output(kind: str) -> None:
    t = tally({"type": kind, "delta": "abcdefghi"})
    # One frame of 9 characters: (9 + 3) // 4 = 3 tokens, none of them the completion.
    assert t.result() == Counts(0, 3, estimated=True, error=None, final=False)
    assert t.completion == ""


@pytest.mark.parametrize(
    "value",
    [
        {"type": "response.output_text.done", "delta": "abcdefgh", "text": "abcdefgh"},
        {"type": "response.output_item.added", "delta": "abcdefgh"},
        {"type": "content.delta", "delta": "abcdefgh"},
        {"type": "delta", "delta": "abcdefgh"},
        {"type": "response.output_text.delta", "delta": {"text": "abcdefgh"}},
        {"type": "response.output_text.delta"},
        {"type": "message_stop"},
        {"type": "ping"},
    ],
)
def test_events_that_carry_no_output_count_nothing(value: dict[str, Any]) -> None:
    t = tally(value, {"choices": [], "usage": ZERO})
    assert t.result() == Counts(0, 0, estimated=False, error=None, final=True)
    assert t.completion == ""


# -- Anthropic messages --------------------------------------------------------------------


def test_a_messages_stream_counts_input_at_start_and_output_in_the_final_delta() -> None:
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 11, "output_tokens": 1}},
    }
    t = tally((start, "message_start"))
    assert t.result() == Counts(11, 0, estimated=True, error=None, final=False)
    t.openai({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}})
    t.openai({"type": "content_block_delta", "delta": {"type": "text_delta", "text": " you"}})
    assert t.result() == Counts(11, 2, estimated=True, error=None, final=False)
    t.openai({"type": "message_delta", "usage": {"output_tokens": 5}}, "message_delta")
    assert t.result() == Counts(11, 5, estimated=False, error=None, final=True)
    assert t.completion == "Hi you"


def test_a_final_delta_may_correct_the_input_count() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 11}}}
    end = {"type": "message_delta", "usage": {"input_tokens": 12, "output_tokens": 5}}
    assert tally(start, end).result() == Counts(12, 5, estimated=False, error=None, final=True)


@pytest.mark.parametrize(
    "message", [None, "x", {}, {"usage": None}, {"usage": {"output_tokens": 3}}]
)
def test_a_message_start_without_an_input_count_leaves_it_unknown(message: Any) -> None:
    t = tally({"type": "message_start", "message": message}, prompt_estimate=6)
    assert t.result() == Counts(6, 0, estimated=True, error=None, final=False)


def test_a_message_start_reads_only_the_message_usage() -> None:
    start = {
        "type": "message_start",
        "usage": {"input_tokens": 99, "output_tokens": 99},
        "message": {"usage": {"input_tokens": 4}},
    }
    assert tally(start).result() == Counts(4, 0, estimated=True, error=None, final=False)


@pytest.mark.parametrize("usage", [None, [5], "5"])
def test_a_message_delta_without_usage_does_not_end_the_stream(usage: Any) -> None:
    t = tally({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage})
    assert t.result() == Counts(0, 0, estimated=True, error=None, final=False)


def test_thinking_and_tool_input_deltas_are_generated_output() -> None:
    thinking = {
        "type": "content_block_delta",
        "delta": {"type": "thinking_delta", "thinking": "abcdefg"},
    }
    # One frame of 7 characters: (7 + 3) // 4 = 2 tokens.
    assert tally(thinking).result() == Counts(0, 2, estimated=True, error=None, final=False)
    tool = {
        "type": "content_block_delta",
        "delta": {"type": "input_json_delta", "partial_json": '{"a": 12345}'},
    }
    # 12 characters: (12 + 3) // 4 = 3 tokens.
    t = tally(tool)
    assert t.result() == Counts(0, 3, estimated=True, error=None, final=False)
    assert t.completion == ""


@pytest.mark.parametrize(
    "delta", [None, "text", {"text": 5}, {"type": "text_delta"}, {"thinking": ""}]
)
def test_a_content_block_delta_without_output_counts_nothing(delta: Any) -> None:
    t = tally({"type": "content_block_delta", "delta": delta}, {"choices": [], "usage": ZERO})
    assert t.result() == Counts(0, 0, estimated=False, error=None, final=True)
