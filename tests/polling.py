"""Waiting in tests: poll a check until it holds, and fail (never return) when it does not."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    check: Callable[[], T | None],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    *,
    what: str = "",
) -> T:
    """``check()`` until it returns something truthy; that value. Raises AssertionError naming
    what was awaited (``what``, or the check's source line) and its last value after
    ``timeout_s``: a caller that forgets to assert still fails. To show that something does
    *not* happen, sleep a bounded time and assert instead."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s} s: {what or _describe(check)} (last: {found!r})"
            )
        time.sleep(interval_s)


def _describe(check: Callable[[], object]) -> str:
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
