"""Test-side handle on a running stack: the stack client, plus stopping and starting parts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from devstack.client import Caller, StackClient
from devstack.processes import Proc
from devstack.stack import Stack, StackConfig

__all__ = ["Caller", "Gateway", "beside", "replicas"]


class Gateway(StackClient):
    def envoy_stats(self, pattern: str) -> dict[str, int]:
        """Envoy's counters and gauges whose name matches ``pattern`` (its admin ``/stats``
        filter, a regex), by name."""
        text = httpx.get(
            f"{self.stack.envoy_admin}/stats", params={"filter": pattern}, timeout=5
        ).text
        pairs = (line.rsplit(": ", 1) for line in text.splitlines() if ": " in line)
        return {name: int(value) for name, value in pairs if value.isdigit()}

    def managed(self, name: str) -> Proc:
        """A component this stack started (to stop and start it again); skips the test when
        it is external (``DATABASE_URL`` / ``REDIS_URL`` / ``OLLAMA_URL`` set)."""
        proc = self.stack.procs.get(name)
        if proc is None:
            pytest.skip(f"{name} is an external instance, not started by the tests")
        return proc


@contextmanager
def beside(session: Stack, **config: Any) -> Iterator[Gateway]:
    """Another stack on the session's PostgreSQL and Redis (its own services, Envoy and, unless
    ``mocks`` or ``ollama_urls`` say otherwise, the session's model server), with ``config``
    in place of the session's settings; stopped at the end."""
    defaults = StackConfig(
        database_url=session.database_url,
        pooler_url=session.pooler_url or None,  # the session's PgBouncer, if it has one
        redis_url=session.redis_url,
        redis_cluster=session.config.redis_cluster,  # the session's Redis Cluster, if it has one
        ollama_urls=[] if config.get("mocks") else session.ollama_urls,
    )
    running = Stack(dataclasses.replace(defaults, **config)).start()
    try:
        yield Gateway(running)
    finally:
        running.stop()


@contextmanager
def replicas(session: Stack, n: int, **config: Any) -> Iterator[list[Gateway]]:
    """``n`` complete replicas — each its own Envoy, authz, ratelimit and accounting, as pods
    are — sharing one PostgreSQL (the session's) and one Redis: the first one's, which it
    starts when ``config`` says so (``redis_url=None, redis_cluster=True``: a Redis Cluster of
    its own), else the session's. Stopped at the end, the last first."""
    with ExitStack() as started:
        first = started.enter_context(beside(session, **config))
        shared = {k: v for k, v in config.items() if k not in ("redis_url", "redis_cluster")}
        rest = [started.enter_context(beside(first.stack, **shared)) for _ in range(n - 1)]
        yield [first, *rest]
