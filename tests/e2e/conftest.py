"""Fixtures shared by the e2e test modules (the stack itself is ``gw`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_admin import Grpcurl
from tests.gateway_client import Gateway


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> Iterator[Grpcurl]:
    client = Grpcurl(f"127.0.0.1:{gw.stack.ports['admin']}", gw.stack.admin_token)
    try:
        yield client
    finally:
        client.channel.close()
