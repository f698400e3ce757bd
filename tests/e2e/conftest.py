"""Fixtures shared by the e2e test modules (the stack itself is ``gw`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_admin import Grpcurl, admin_of
from tests.gateway_client import Gateway


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> Iterator[Grpcurl]:
    with admin_of(gw) as client:
        yield client
