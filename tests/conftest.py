"""One real stack per test session: PostgreSQL, Redis, Envoy, our services, mock Ollama.

``DATABASE_URL`` / ``REDIS_URL`` / ``OLLAMA_URL`` point the tests at external instances.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devstack.stack import Stack, StackConfig
from tests.gateway_client import Gateway
from tests.ollama_decoder import OllamaDecoder


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    config = StackConfig(
        database_url=os.environ.get("DATABASE_URL") or None,
        redis_url=os.environ.get("REDIS_URL") or None,
        ollama_urls=[u for u in os.environ.get("OLLAMA_URL", "").split(",") if u],
        extra_env={"NZ_DISCOVERY_INTERVAL_S": "1"},
        # NZ_TEST_PGBOUNCER=1: the services reach PostgreSQL through PgBouncer (transaction mode)
        pgbouncer=os.environ.get("NZ_TEST_PGBOUNCER") == "1",
        # NZ_TEST_REDIS=cluster: a Redis Cluster of 3 masters + 3 replicas instead of one Redis
        redis_cluster=os.environ.get("NZ_TEST_REDIS") == "cluster",
    )
    running = Stack(config).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def gw(stack: Stack) -> Gateway:
    return Gateway(stack)


@pytest.fixture(scope="session")
def ollama_decoder() -> Iterator[OllamaDecoder]:
    """Bodies as Ollama's Go decoder reads them (tests/ollama_decoder/main.go)."""
    decoder = OllamaDecoder()
    try:
        yield decoder
    finally:
        decoder.close()
