"""Tokens/min debits: accounting makes them, through the rate limit service.

Envoy checks the tokens/min windows before a request (``hits_addend: 0`` descriptors in
``envoy/envoy.yaml``) but cannot debit them after it: it never waits for accounting
(observability mode), so it never learns the counts. After every stream — finished or cut
short — accounting sends the RLS what Envoy would have sent: a ``ShouldRateLimit`` with the
tokens/min descriptors of the key and the tenant (limits from authz's ``rl`` metadata) and a
per-descriptor ``hits_addend`` of the tokens used. The RLS stays the one owner of the windows;
a per-descriptor ``hits_addend`` > 0 is a debit there (ratelimit/decide.py), recorded whatever
the window says.

Debits are gathered for :data:`FLUSH_S` and sent as one call, the same window's summed (one
RLS call per interval, not per stream). The descriptors are those Envoy checks:
``limit=key_tpm, tenant_id, key_id`` and ``limit=tenant_tpm, tenant_id``, in the domain
``gateway`` (tests/unit/test_accounting_cut.py keeps them in step). :func:`windows` is the one
place in Python that names them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from prometheus_client import Counter

from accounting.stream import RequestInfo
from gateway import logs

DOMAIN = "gateway"
TIMEOUT_S = 1.0
# Debits wait this long to be sent together (tokens/min windows learn of a stream this late).
FLUSH_S = 0.1
DEBIT_ERRORS = Counter("accounting_tpm_debit_errors_total", "failed tokens/min debits at the RLS")
_log = logs.get("accounting")

_Descriptor = ratelimit_pb2.RateLimitDescriptor
# The windows of authz's ``rl`` that count tokens (the others count requests).
TOKEN_WINDOWS = ("key_tpm", "tenant_tpm")


# One window to debit: its descriptor's entries and its limit override (per unit, unit).
_Window = tuple[tuple[tuple[str, str], ...], int, int]


def windows(info: RequestInfo) -> list[_Window]:
    """The tokens/min windows of the request's key and tenant; none when no tokens/min limit
    applies."""
    if not info.tenant_id:
        return []
    found: list[_Window] = []
    for limit in info.rl:
        if limit.name not in TOKEN_WINDOWS:
            continue  # requests/min: Envoy's own descriptors count those
        entries = [("limit", limit.name), ("tenant_id", info.tenant_id)]
        if limit.name == "key_tpm":
            if not info.key_id:
                continue
            entries.append(("key_id", info.key_id))
        try:
            unit = ratelimit_unit_pb2.RateLimitUnit.Value(limit.unit)
        except ValueError:  # not a unit the RLS knows: no window to debit
            continue
        found.append((tuple(entries), limit.requests_per_unit, unit))
    return found


def _descriptor(window: _Window, tokens: int) -> Any:
    entries, per_unit, unit = window
    descriptor = _Descriptor(
        entries=[_Descriptor.Entry(key=k, value=v) for k, v in entries],
        limit=_Descriptor.RateLimitOverride(requests_per_unit=per_unit, unit=unit),
    )
    descriptor.hits_addend.value = tokens
    return descriptor


class TokenDebits:
    """Debits gathered for :data:`FLUSH_S` and sent as one ``ShouldRateLimit`` (the same
    window's debits summed): one RLS call per interval instead of one per stream. A gRPC
    client of the RLS, opened on first use (in the running loop)."""

    def __init__(self, address: str, timeout_s: float = TIMEOUT_S) -> None:
        self._address = address
        self._timeout = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._pending: dict[_Window, int] = {}

    def add(self, info: RequestInfo, tokens: int) -> None:
        """Debit ``tokens`` from the request's tokens/min windows at the next flush (never
        waits; nothing when no tokens/min limit applies)."""
        if tokens <= 0:
            return
        for window in windows(info):
            self._pending[window] = self._pending.get(window, 0) + tokens

    @property
    def pending(self) -> dict[str, int]:
        """The debits not yet sent, by window (``key=value|…``)."""
        return {"|".join(f"{k}={v}" for k, v in w[0]): n for w, n in self._pending.items()}

    async def flush(self) -> None:
        """Send what is pending. Raises ``grpc.aio.AioRpcError`` when the RLS cannot answer;
        the debits are then kept (merged with later ones) for the next flush."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        found = [_descriptor(window, tokens) for window, tokens in batch.items()]
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = rls_pb2_grpc.RateLimitServiceStub(self._channel)
        request = rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=found)
        try:
            await self._stub.ShouldRateLimit(request, timeout=self._timeout)
        except BaseException:
            for window, tokens in batch.items():
                self._pending[window] = self._pending.get(window, 0) + tokens
            raise

    async def run(self) -> None:
        """Flush every :data:`FLUSH_S`; an RLS that does not answer is tried again next time
        (the pending debits stay bounded: one entry per key and tenant window)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except grpc.aio.AioRpcError as exc:
                DEBIT_ERRORS.inc()
                _log.warning("tokens/min debit failed", code=exc.code().name)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
