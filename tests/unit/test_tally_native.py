"""Token counts from Ollama's native frames (accounting/tally.py): the NDJSON frames of
``/api/chat`` and ``/api/generate`` and the JSON bodies of ``/api/*``. What a tenant is charged
comes from here: the counts Ollama reports in its final frame, or an estimate marked as such
when it reports none. Every expected value is written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from accounting.tally import Counts, Tally


def tally(*frames: Any, prompt_estimate: int = 0) -> Tally:
    t = Tally(prompt_estimate)
    for frame in frames:
        t.native(frame)
    return t


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": content}, "done": False, **extra}


def final(**counts: Any) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": ""}, "done": True, **counts}


# -- the final frame's counts --------------------------------------------------------------


def test_a_chat_stream_is_charged_the_counts_of_its_final_frame() -> None:
    t = tally(chat("Hel"), chat("lo"), final(prompt_eval_count=12, eval_count=2))
    assert t.result() == Counts(12, 2, estimated=False, error=None, final=True)
    assert t.result().total == 14
    assert t.completion == "Hello"


def test_a_generate_stream_reads_the_response_field() -> None:
    frames = [
        {"response": "ab", "done": False},
        {"response": "c", "done": False},
        {"response": "", "done": True, "prompt_eval_count": 3, "eval_count": 2},
    ]
    t = tally(*frames)
    assert t.result() == Counts(3, 2, estimated=False, error=None, final=True)
    assert t.completion == "abc"


def test_the_stream_is_not_final_before_its_done_frame() -> None:
    t = tally(chat("Hel"), chat("lo"), prompt_estimate=6)
    assert t.final is False
    # Two content frames: at least two tokens; the prompt as authz estimated it.
    assert t.result() == Counts(6, 2, estimated=True, error=None, final=False)


@pytest.mark.parametrize("done", [1, "true", "yes", None, False])
def test_only_done_true_ends_the_stream(done: Any) -> None:
    t = tally({"response": "x", "done": done, "prompt_eval_count": 3, "eval_count": 9})
    # Not the final frame: its counts are not taken, the one frame is one token.
    assert t.result() == Counts(0, 1, estimated=True, error=None, final=False)


def test_the_final_frames_counts_replace_nothing_but_themselves() -> None:
    """A done frame without eval_count: the output is estimated, the prompt count is real."""
    t = tally({"response": "abcdefgh", "done": True, "prompt_eval_count": 3})
    # One frame of 8 characters: (8 + 3) // 4 = 2 tokens.
    assert t.result() == Counts(3, 2, estimated=True, error=None, final=True)


def test_a_done_frame_without_any_count_is_estimated_from_the_prompt_and_the_frames() -> None:
    t = tally(chat("one"), chat("two"), chat("three"), final(), prompt_estimate=9)
    assert t.result() == Counts(9, 3, estimated=True, error=None, final=True)


# -- embeddings ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["embeddings", "embedding"])
def test_an_embedding_body_is_final_and_generates_nothing(field: str) -> None:
    t = tally({field: [[0.1, 0.2]], "prompt_eval_count": 3})
    assert t.result() == Counts(3, 0, estimated=False, error=None, final=True)


@pytest.mark.parametrize("field", ["embeddings", "embedding"])
def test_an_embedding_body_with_an_output_count_keeps_it(field: str) -> None:
    t = tally({field: [0.5], "prompt_eval_count": 2, "eval_count": 5})
    assert t.result() == Counts(2, 5, estimated=False, error=None, final=True)


def test_an_embedding_body_without_a_prompt_count_is_estimated() -> None:
    t = tally({"embeddings": [[0.1]]}, prompt_estimate=4)
    assert t.result() == Counts(4, 0, estimated=True, error=None, final=True)


# -- what a count may be -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "prompt_estimate", "tokens_in", "estimated"),
    [
        (7, 5, 7, False),
        (7.9, 5, 7, False),  # a float count is cut to an int
        (0.0, 0, 0, False),
        (0, 0, 0, False),
        (-4, 0, 0, False),  # a negative count is 0, never a credit
        (-4.5, 0, 0, False),
        (True, 5, 5, True),  # a bool is not a count
        (False, 0, 0, True),
        ("7", 5, 5, True),  # nor is a string
        (None, 5, 5, True),
        ([7], 5, 5, True),
        ({"n": 7}, 5, 5, True),
    ],
)
def test_only_a_number_is_a_count(
    given: Any, prompt_estimate: int, tokens_in: int, estimated: bool
) -> None:
    t = tally(final(prompt_eval_count=given, eval_count=0), prompt_estimate=prompt_estimate)
    assert t.result() == Counts(tokens_in, 0, estimated=estimated, error=None, final=True)


@pytest.mark.parametrize(
    ("given", "tokens_out", "estimated"),
    [(5, 5, False), (5.99, 5, False), (-1, 0, False), (True, 0, True), ("5", 0, True)],
)
def test_only_a_number_is_an_output_count(given: Any, tokens_out: int, estimated: bool) -> None:
    t = tally(final(prompt_eval_count=3, eval_count=given))
    assert t.result() == Counts(3, tokens_out, estimated=estimated, error=None, final=True)


# -- errors --------------------------------------------------------------------------------


def test_an_error_frame_records_the_error_and_nothing_else() -> None:
    frame = {"error": "boom", "response": "abc", "done": True, "prompt_eval_count": 3}
    t = tally(frame, prompt_estimate=2)
    assert t.result() == Counts(2, 0, estimated=True, error="boom", final=False)
    assert t.completion == ""


def test_an_error_after_content_keeps_what_was_generated() -> None:
    t = tally(chat("a"), chat("b"), {"error": "model crashed"})
    assert t.result() == Counts(0, 2, estimated=True, error="model crashed", final=False)
    assert t.completion == "ab"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ("model 'x' not found", "model 'x' not found"),
        ({"message": "out of memory", "type": "server", "code": "E1"}, "out of memory"),
        ({"type": "server", "code": "E1"}, "server"),
        ({"code": "E1"}, "E1"),
        ({"message": "", "type": "", "code": "E1"}, "E1"),  # an empty field is no text
        ({"message": 5, "type": None, "code": "E1"}, "E1"),  # nor a field that is no string
        ({}, "error"),
        ({"detail": "x"}, "error"),
        ("", "error"),
        (0, "error"),
        (None, "error"),
        (False, "error"),
        (404, "404"),
        (["a"], "['a']"),
    ],
)
def test_the_error_text_is_the_best_field_there_is(error: Any, text: str) -> None:
    assert tally({"error": error}).result().error == text


def test_an_error_text_is_cut_to_500_characters() -> None:
    long = "e" * 499 + "XYZ"
    assert tally({"error": long}).result().error == "e" * 499 + "X"
    assert tally({"error": {"message": long}}).result().error == "e" * 499 + "X"
    assert tally({"error": {"code": "c" * 501}}).result().error == "c" * 500


# -- thinking and tool calls ---------------------------------------------------------------


def test_thinking_is_generated_output_counted_by_size() -> None:
    thinking = {"message": {"role": "assistant", "content": "", "thinking": "abcdefghij"}}
    t = tally(thinking, final(prompt_eval_count=2))
    # One frame of 10 characters: (10 + 3) // 4 = 3 tokens; none of it is the completion.
    assert t.result() == Counts(2, 3, estimated=True, error=None, final=True)
    assert t.completion == ""


def test_thinking_of_a_generate_frame_is_counted() -> None:
    t = tally({"response": "", "thinking": "abcdefghijklm", "done": False})
    # (13 + 3) // 4 = 4 tokens.
    assert t.result() == Counts(0, 4, estimated=True, error=None, final=False)


def test_tool_calls_are_counted_by_the_size_of_their_text() -> None:
    calls = [{"function": {"name": "f", "arguments": {}}}]
    # "[{'function': {'name': 'f', 'arguments': {}}}]" is 46 characters: (46 + 3) // 4 = 12.
    t = tally({"message": {"role": "assistant", "content": "", "tool_calls": calls}})
    assert t.result() == Counts(0, 12, estimated=True, error=None, final=False)


def test_thinking_counts_before_tool_calls_in_one_frame() -> None:
    calls = [{"function": {"name": "f", "arguments": {}}}]
    frame = {"message": {"content": "", "thinking": "abcd", "tool_calls": calls}}
    assert tally(frame).result() == Counts(0, 1, estimated=True, error=None, final=False)


def test_text_counts_before_thinking_in_one_frame() -> None:
    frame = {"message": {"content": "ab", "thinking": "a" * 40}}
    t = tally(frame)
    # Only the two characters of text: one token, not eleven.
    assert t.result() == Counts(0, 1, estimated=True, error=None, final=False)
    assert t.completion == "ab"


def test_thinking_and_text_frames_each_count_one_token() -> None:
    frames = [
        {"message": {"content": "", "thinking": "hmm"}},
        {"message": {"content": "", "tool_calls": [{"function": {"name": "g"}}]}},
        chat("ok"),
    ]
    assert tally(*frames).result() == Counts(0, 3, estimated=True, error=None, final=False)


@pytest.mark.parametrize(
    "frame",
    [
        {"message": {"content": ""}},
        {"message": {"content": "", "thinking": "", "tool_calls": []}},
        {"message": {"content": None}},
        {"message": {"content": ["a", "b"]}},
        {"response": ""},
        {"response": 5},
        {"message": "hello"},  # a message that is no object: the frame's own fields count
        {"done": False},
    ],
)
def test_a_frame_without_generated_output_counts_nothing(frame: dict[str, Any]) -> None:
    t = tally(frame, final(prompt_eval_count=2, eval_count=0))
    # No content frame: the reported 0 is believed.
    assert t.result() == Counts(2, 0, estimated=False, error=None, final=True)
    assert t.completion == ""


def test_a_message_that_is_no_object_falls_back_to_the_response_field() -> None:
    t = tally({"message": None, "response": "abc"})
    assert t.completion == "abc"
    assert t.result() == Counts(0, 1, estimated=True, error=None, final=False)


def test_a_zero_output_count_next_to_content_is_unknown() -> None:
    t = tally(chat("a"), chat("b"), chat("c"), final(prompt_eval_count=4, eval_count=0))
    assert t.result() == Counts(4, 3, estimated=True, error=None, final=True)


def test_a_zero_prompt_count_with_an_estimate_is_unknown() -> None:
    t = tally(chat("a"), final(prompt_eval_count=0, eval_count=1), prompt_estimate=8)
    assert t.result() == Counts(8, 1, estimated=True, error=None, final=True)


# -- what is no frame ----------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["error", "done", ["error"], None, 3, b"error"])
def test_a_frame_that_is_no_object_is_ignored(frame: Any) -> None:
    t = tally(frame, prompt_estimate=3)
    assert t.result() == Counts(3, 0, estimated=True, error=None, final=False)
    assert t.completion == ""
