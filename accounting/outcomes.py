"""Recently finished streams by request id, for the audit rows that arrive after them."""

from __future__ import annotations

import time
from collections import OrderedDict

from accounting.stream import Outcome


class RecentOutcomes:
    def __init__(self, ttl_s: float = 60.0, max_entries: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._items: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    def put(self, outcome: Outcome) -> None:
        now = time.monotonic()
        self._items[outcome.info.request_id] = (now, outcome)
        self._items.move_to_end(outcome.info.request_id)
        while self._items:
            oldest_at, _ = next(iter(self._items.values()))
            if len(self._items) <= self._max and now - oldest_at < self._ttl:
                break
            self._items.popitem(last=False)

    def get(self, request_id: str) -> Outcome | None:
        found = self._items.get(request_id)
        return None if found is None else found[1]
