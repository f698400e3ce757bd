"""A clock the test moves by hand, in Unix milliseconds (what ratelimit/windows.py takes)."""

from __future__ import annotations

T0 = 1_800_000_000_000  # ms: 2027-01-15, a fixed instant far from any period boundary in play


class ManualClock:
    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += round(seconds * 1000)
