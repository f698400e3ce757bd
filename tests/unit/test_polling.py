"""The tests' poller (tests/polling.py) fails at its timeout instead of returning: a test that
waits for something and forgets to assert still fails when it never comes."""

from __future__ import annotations

import pytest

from tests.polling import poll


def test_the_first_truthy_value_is_returned() -> None:
    answers = iter([None, [], ["row"]])
    assert poll(lambda: next(answers), timeout_s=1.0, interval_s=0.001) == ["row"]


def test_a_timeout_raises_naming_what_was_awaited() -> None:
    with pytest.raises(AssertionError, match=r"not within 0.05 s: the audit row \(last: \[\]\)"):
        poll(lambda: [], timeout_s=0.05, interval_s=0.01, what="the audit row")


def test_without_a_name_the_check_names_itself() -> None:
    rows: list[str] = []
    with pytest.raises(AssertionError, match=r"lambda: rows"):
        poll(lambda: rows, timeout_s=0.01, interval_s=0.01)
