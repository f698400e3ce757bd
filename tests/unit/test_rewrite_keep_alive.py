"""keep_alive as the body rewrite reads and clamps it (gateway/rewrite.py): a tenant's model
stays loaded between its ``[min, max]`` seconds, never ``0`` (unloads a model other tenants
share) nor ``-1`` (pins it forever). Every expected value is written out by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import rewrite


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (0, 0.0),
        (-1, -1.0),
        (1.5, 1.5),
        ("300", 300.0),
        (" 300 ", 300.0),
        ("-1", -1.0),
        ("2.5", 2.5),
        ("0s", 0.0),
        ("45s", 45.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("1.5h", 5400.0),
        ("1h 30m", 5400.0),  # spaces between the parts are read past
        ("  10m  ", 600.0),
        ("-1s", -1.0),
        ("-5m", -300.0),
        ("1500ms", 1.5),
        ("250ms", 0.25),
        ("2000000us", 2.0),
        ("3000000µs", 3.0),
        ("4000000000ns", 4.0),
    ],
)
def test_keep_alive_reads_as_seconds(value: Any, seconds: float) -> None:
    assert rewrite.keep_alive_seconds(value) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,  # a JSON boolean is not a number of seconds
        False,
        "",
        "forever",
        "5 minutes",
        "m",
        "5x",
        "5m garbage",
        "x5m",
        "+5m",
        ".5s",
        "1e400",  # too large for a float: unreadable, not "forever"
        "-1e400",
        "NaN",
        "inf",
        float("inf"),
        float("-inf"),
        float("nan"),
        [300],
        {"s": 300},
    ],
)
def test_unreadable_keep_alive_is_none(value: Any) -> None:
    assert rewrite.keep_alive_seconds(value) is None


def limits(low: int | None, high: int | None, endpoint: str = "/api/chat") -> rewrite.Limits:
    return rewrite.Limits(endpoint, True, 0, low, high)


def sent(body: dict[str, Any], low: int | None, high: int | None) -> dict[str, Any] | None:
    """The body the backend gets; None when the client's passes unchanged."""
    out = rewrite.rewrite(json.dumps(body).encode(), limits(low, high))
    assert out.strip_usage is False
    return None if out.body is None else dict(json.loads(out.body))


@pytest.mark.parametrize(
    ("given", "low", "high", "expected"),
    [
        # inside the range: untouched
        (300, 60, 1800, None),
        (60, 60, 1800, None),
        (1800, 60, 1800, None),
        ("10m", 60, 1800, None),
        ("30m", 60, 1800, None),
        # below the minimum, or 0 (unload now): the minimum
        (0, 60, 1800, 60),
        (59, 60, 1800, 60),
        ("0s", 60, 1800, 60),
        ("500ms", 60, 1800, 60),
        # above the maximum: the maximum
        (1801, 60, 1800, 1800),
        ("2h", 60, 1800, 1800),
        # negative (forever) or unreadable: the maximum
        (-1, 60, 1800, 1800),
        ("-1s", 60, 1800, 1800),
        ("-1", 60, 1800, 1800),
        ("bogus", 60, 1800, 1800),
        ("1e400", 60, 1800, 1800),
        (True, 60, 1800, 1800),
        (None, 60, 1800, 1800),
        # a fraction of a second is cut to whole seconds
        (90.7, 60, 1800, 90),
        ("90.5s", 60, 1800, 90),
        # only a minimum: forever (or unreadable) becomes the minimum, larger values pass
        (-1, 60, None, 60),
        ("bogus", 60, None, 60),
        (0, 60, None, 60),
        (7200, 60, None, None),
        # only a maximum: 0 passes (unloading is allowed), forever becomes the maximum
        (0, None, 1800, None),
        (5, None, 1800, None),
        (-1, None, 1800, 1800),
        (3600, None, 1800, 1800),
        ("bogus", None, 1800, 1800),
        # no bound at all: nothing to clamp
        (0, None, None, None),
        (-1, None, None, None),
        ("bogus", None, None, None),
    ],
)
def test_keep_alive_is_clamped_into_the_tenants_range(
    given: Any, low: int | None, high: int | None, expected: int | None
) -> None:
    body = {"model": "m", "messages": [], "keep_alive": given}
    out = sent(body, low, high)
    if expected is None:
        assert out is None
    else:
        assert out == {"model": "m", "messages": [], "keep_alive": expected}


def test_a_request_without_keep_alive_gets_none() -> None:
    assert sent({"model": "m", "messages": []}, 60, 1800) is None


@pytest.mark.parametrize("spelling", ["Keep_Alive", "KEEP_ALIVE", "keep_alivE"])
def test_any_spelling_go_matches_is_clamped_and_leaves_canonical(spelling: str) -> None:
    out = sent({"model": "m", spelling: 0}, 60, 1800)
    assert out == {"model": "m", "keep_alive": 60}


def test_a_differently_spelled_keep_alive_in_range_is_left_as_sent() -> None:
    assert sent({"model": "m", "Keep_Alive": "10m"}, 60, 1800) is None
