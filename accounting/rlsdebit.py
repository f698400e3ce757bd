"""Tokens/min debits: accounting makes them, through the rate limit service.

Envoy checks the tokens/min windows before a request (``hits_addend: 0`` descriptors in
``envoy/envoy.yaml``) but cannot debit them after it: it never waits for accounting
(observability mode), so it never learns the counts. After every stream — finished or cut
short — accounting sends the RLS what Envoy would have sent: a ``ShouldRateLimit`` with the
tokens/min descriptors of the key and the tenant (limits from authz's ``rl`` metadata) and a
per-descriptor ``hits_addend`` of the tokens used. The RLS stays the one owner of the windows;
a per-descriptor ``hits_addend`` > 0 is a debit there (ratelimit/decide.py), recorded whatever
the window says.

The descriptors are those Envoy checks: ``limit=key_tpm, tenant_id, key_id`` and
``limit=tenant_tpm, tenant_id``, in the domain ``gateway`` (tests/unit/test_accounting_cut.py
keeps them in step). :func:`descriptors` is the one place in Python that builds them.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2

from accounting.stream import RequestInfo

DOMAIN = "gateway"
TIMEOUT_S = 1.0

_Descriptor = ratelimit_pb2.RateLimitDescriptor


def descriptors(info: RequestInfo, tokens: int) -> list[Any]:
    """The tokens/min descriptors of the request's key and tenant, each debiting ``tokens``;
    none when no tokens/min limit applies or nothing was used."""
    if tokens <= 0 or not info.tenant_id:
        return []
    found: list[Any] = []
    for limit in info.token_limits:
        entries = [("limit", limit.name), ("tenant_id", info.tenant_id)]
        if limit.name == "key_tpm":
            if not info.key_id:
                continue
            entries.append(("key_id", info.key_id))
        try:
            unit = ratelimit_unit_pb2.RateLimitUnit.Value(limit.unit)
        except ValueError:  # not a unit the RLS knows: no window to debit
            continue
        descriptor = _Descriptor(
            entries=[_Descriptor.Entry(key=k, value=v) for k, v in entries],
            limit=_Descriptor.RateLimitOverride(
                requests_per_unit=limit.requests_per_unit, unit=unit
            ),
        )
        descriptor.hits_addend.value = tokens
        found.append(descriptor)
    return found


class TokenDebits:
    """A gRPC client of the RLS, opened on first use (in the running loop)."""

    def __init__(self, address: str, timeout_s: float = TIMEOUT_S) -> None:
        self._address = address
        self._timeout = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def debit(self, info: RequestInfo, tokens: int) -> bool:
        """Debit ``tokens`` from the request's tokens/min windows; False when there was
        nothing to debit. Raises ``grpc.aio.AioRpcError`` when the RLS cannot answer."""
        found = descriptors(info, tokens)
        if not found:
            return False
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = rls_pb2_grpc.RateLimitServiceStub(self._channel)
        request = rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=found)
        await self._stub.ShouldRateLimit(request, timeout=self._timeout)
        return True

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
