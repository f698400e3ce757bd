"""Estimates and the kept completion (accounting/tally.py): what a tenant is charged when the
backend reports no count, and what the prompt log keeps of a long answer. Every expected value
is written out by hand."""

from __future__ import annotations

import tracemalloc

import pytest

from accounting.tally import MAX_COMPLETION_CHARS, Counts, Tally, estimate_tokens

CAP = 262_144  # 256 KiB of characters


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("a", 1),
        ("abc", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("abcdefgh", 2),
        ("abcdefghi", 3),
        ("x" * 400, 100),
        ("x" * 401, 101),
    ],
)
def test_a_text_is_estimated_at_four_characters_a_token(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_a_counts_total_is_input_plus_output() -> None:
    assert Counts(3, 4, estimated=False, error=None, final=True).total == 7
    assert Counts(0, 0, estimated=True, error="x", final=False).total == 0


def test_a_fresh_tally_has_seen_nothing() -> None:
    t = Tally()
    assert t.prompt_estimate == 0
    assert (t.tokens_in, t.tokens_out, t.error, t.final, t.frames) == (None, None, None, False, 0)
    assert t.completion == ""
    assert t.result() == Counts(0, 0, estimated=True, error=None, final=False)


def test_the_prompt_estimate_stands_in_for_a_missing_prompt_count() -> None:
    t = Tally(17)
    assert t.prompt_estimate == 17
    assert t.result() == Counts(17, 0, estimated=True, error=None, final=False)


@pytest.mark.parametrize(
    ("texts", "tokens_out"),
    [
        (["a"], 1),  # at least one token for a frame
        (["abcd"], 1),
        (["abcde"], 2),  # one body: estimated by size, (5 + 3) // 4
        (["x" * 40], 10),
        (["x" * 41], 11),
        (["x" * 40, "y" * 40], 2),  # a stream: one token per content frame
        (["x" * 40, "y" * 40, "z"], 3),
        (["a", "b"], 2),
    ],
)
def test_a_missing_output_count_is_estimated(texts: list[str], tokens_out: int) -> None:
    t = Tally(5)
    for text in texts:
        t.native({"response": text})
    t.native({"response": "", "done": True, "prompt_eval_count": 9})
    assert t.result() == Counts(9, tokens_out, estimated=True, error=None, final=True)


def test_a_whole_body_with_text_and_thinking_is_estimated_from_both() -> None:
    t = Tally(0)
    body = {"choices": [{"message": {"content": "x" * 20, "reasoning": "y" * 20}}]}
    t.openai(body, whole=True)
    # The message's text counts; its reasoning does not when there is text: (20 + 3) // 4 = 5.
    assert t.result() == Counts(0, 5, estimated=True, error=None, final=True)


def test_a_lone_thinking_frame_is_estimated_by_its_size() -> None:
    t = Tally(0)
    t.native({"message": {"content": "", "thinking": "y" * 20}})
    t.native({"message": {"content": ""}, "done": True, "prompt_eval_count": 1})
    # One thinking frame of 20 characters: (20 + 3) // 4 = 5.
    assert t.result() == Counts(1, 5, estimated=True, error=None, final=True)


def test_a_result_is_the_same_when_asked_twice() -> None:
    t = Tally(3)
    t.native({"message": {"content": "hello"}})
    assert t.result() == t.result() == Counts(3, 2, estimated=True, error=None, final=False)


# -- the kept completion -------------------------------------------------------------------


def test_the_completion_cap_is_256_kib_of_characters() -> None:
    assert MAX_COMPLETION_CHARS == CAP


def test_the_completion_joins_the_text_frames() -> None:
    t = Tally()
    for text in ("Hel", "lo", ", ", "world"):
        t.native({"message": {"content": text}})
    assert t.completion == "Hello, world"


def test_a_completion_longer_than_the_cap_is_cut_but_counted() -> None:
    t = Tally()
    t.native({"response": "a" * (CAP - 1)})
    t.native({"response": "bc"})
    t.native({"response": "d"})
    assert t.completion == "a" * (CAP - 1) + "b"
    assert t.result() == Counts(0, 3, estimated=True, error=None, final=False)


def test_text_after_the_cap_is_not_kept() -> None:
    t = Tally()
    t.native({"response": "a" * CAP})
    t.native({"response": "b"})
    assert t.completion == "a" * CAP


def test_one_frame_longer_than_the_cap_is_cut_and_estimated_by_its_whole_size() -> None:
    t = Tally()
    t.native({"response": "a" * (CAP + 7), "done": True, "prompt_eval_count": 2})
    assert t.completion == "a" * CAP
    # (262151 + 3) // 4 = 65538 tokens: the whole frame, not the kept part.
    assert t.result() == Counts(2, 65_538, estimated=True, error=None, final=True)


def test_a_long_frame_counts_its_whole_size() -> None:
    t = Tally()
    t.native({"response": "a" * 41})
    # (41 + 3) // 4 = 11; a cap on what is kept never lowers what is charged.
    assert t.result().tokens_out == 11


def test_a_long_stream_keeps_a_bounded_completion_in_memory() -> None:
    """The prompt log keeps at most the cap: a long answer must not grow the accounting
    process without bound (each frame a new 64 KiB string, 100 of them: 6.4 MiB)."""
    t = Tally()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            t.native({"response": chr(ord("a") + i % 26) * 65_536})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000  # the four frames up to the cap (256 KiB) and little else
    assert t.completion == "a" * 65_536 + "b" * 65_536 + "c" * 65_536 + "d" * 65_536
    assert t.result().tokens_out == 100


# -- a reported zero -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt_estimate", "tokens_in", "estimated"), [(0, 0, False), (1, 1, True), (30, 30, True)]
)
def test_a_zero_prompt_count_is_unknown_when_authz_estimated_a_prompt(
    prompt_estimate: int, tokens_in: int, estimated: bool
) -> None:
    t = Tally(prompt_estimate)
    t.openai({"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    assert t.result() == Counts(tokens_in, 0, estimated=estimated, error=None, final=True)


def test_a_zero_output_count_after_one_content_frame_is_unknown() -> None:
    t = Tally()
    t.native({"response": "abcde"})
    t.native({"response": "", "done": True, "prompt_eval_count": 2, "eval_count": 0})
    # One frame of 5 characters: (5 + 3) // 4 = 2 tokens, not the reported 0.
    assert t.result() == Counts(2, 2, estimated=True, error=None, final=True)
