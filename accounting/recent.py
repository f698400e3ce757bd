"""What one stream of a request leaves for another of the same request, in this process, by
request id: the outcome of an observed stream for its audit row (which arrives after it), the
prompt a rewrite stream read for the observed stream's prompt log. Bounded in size and age."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    def __init__(self, ttl_s: float = 60.0, max_entries: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, request_id: str, value: T) -> None:
        now = time.monotonic()
        self._items[request_id] = (now, value)
        self._items.move_to_end(request_id)
        while self._items:
            oldest_at, _ = next(iter(self._items.values()))
            if len(self._items) <= self._max and now - oldest_at < self._ttl:
                break
            self._items.popitem(last=False)

    def get(self, request_id: str) -> T | None:
        found = self._items.get(request_id)
        return None if found is None else found[1]

    def pop(self, request_id: str) -> T | None:
        found = self._items.pop(request_id, None)
        return None if found is None else found[1]
