"""Test-side handle on a running stack: the stack client, plus stopping and starting parts."""

from __future__ import annotations

import pytest

from devstack.client import Caller, StackClient
from devstack.processes import Proc

__all__ = ["Caller", "Gateway"]


class Gateway(StackClient):
    def managed(self, name: str) -> Proc:
        """A component this stack started (to stop and start it again); skips the test when
        it is external (``DATABASE_URL`` / ``REDIS_URL`` / ``OLLAMA_URL`` set)."""
        proc = self.stack.procs.get(name)
        if proc is None:
            pytest.skip(f"{name} is an external instance, not started by the tests")
        return proc
