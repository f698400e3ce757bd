"""How long the Redis Lua scripts take, by script: ``neuronetz_redis_script_seconds{script}``.

Every place a service runs one of its scripts (``gateway/lua``, ``authz/lua``,
``ratelimit/window.lua``) awaits the call through a module-level :class:`Timer`, named after
the script's file. The round trip is what is timed (a script sent in a pipeline: the
pipeline's), so a slow or overloaded Redis shows here before it shows as fail-closed 503s.
A call that fails is observed too: a timeout is the slowest answer of all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Histogram

T = TypeVar("T")

SCRIPT_SECONDS = Histogram(
    "neuronetz_redis_script_seconds",
    "Round trip of one Redis Lua script call (or of the pipeline carrying it), by script",
    ["script"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


class Timer:
    """One script's series, labelled once (at import), observed on every call."""

    __slots__ = ("_observe", "script")

    def __init__(self, script: str) -> None:
        self.script = script
        self._observe = SCRIPT_SECONDS.labels(script).observe

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call`` (the script's call, or the pipeline's ``execute()``) and observe it."""
        started = time.perf_counter()
        try:
            return await call
        finally:
            self._observe(time.perf_counter() - started)
