"""The gRPC edge of the RLS: Envoy's RateLimitRequest in, RateLimitResponse out. Nothing else."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2

from gateway import logs
from gateway.rls import Descriptor, Limit, RateLimitRequest, Unit
from gateway.storeerrors import StoreUnavailable
from ratelimit import metrics
from ratelimit.announce import Announcer
from ratelimit.decide import Decider, Decision, tenant_of

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
_log = logs.get("ratelimit")
_Response = rls_pb2.RateLimitResponse


# Envoy's units as ours, and ours as the response's: looked up, not converted by name per call.
_UNITS = {
    number: Unit(name)
    for name, number in ratelimit_unit_pb2.RateLimitUnit.items()
    if name in Unit.__members__
}
_RESPONSE_UNITS = {unit: _Response.RateLimit.Unit.Value(unit.value) for unit in Unit}
_UNKNOWN_UNIT = ratelimit_unit_pb2.UNKNOWN


# Distinct descriptors remembered already converted: a key's come back with every request.
_DESCRIPTORS_CACHED = 16_384


def to_request(message: Any) -> RateLimitRequest:
    return RateLimitRequest(
        domain=message.domain,
        descriptors=tuple([_descriptor(d.SerializeToString()) for d in message.descriptors]),
        hits_addend=message.hits_addend,
    )


@lru_cache(maxsize=_DESCRIPTORS_CACHED)
def _descriptor(raw: bytes) -> Descriptor:
    """One descriptor, by its wire bytes (equal bytes, equal descriptor; it is immutable)."""
    d = ratelimit_pb2.RateLimitDescriptor.FromString(raw)
    limit = None
    if d.HasField("limit") and d.limit.unit != _UNKNOWN_UNIT:
        limit = Limit(d.limit.requests_per_unit, _UNITS[d.limit.unit])
    return Descriptor(
        entries=tuple([(e.key, e.value) for e in d.entries]),
        limit=limit,
        hits_addend=d.hits_addend.value if d.HasField("hits_addend") else None,
    )


# Dynamic metadata of a refusal (docs/CONTRACTS.md).
REFUSED_METADATA = {"refused": True}
_OK, _OVER = _Response.OK, _Response.OVER_LIMIT


def to_response(decision: Decision) -> Any:
    response = _Response(overall_code=_OVER if decision.over else _OK)
    add = response.statuses.add
    for s in decision.statuses:
        status = add(code=_OVER if s.over else _OK)
        if s.limit is not None:
            current = status.current_limit
            current.requests_per_unit = s.limit.requests_per_unit
            current.unit = _RESPONSE_UNITS[s.limit.unit]
            status.limit_remaining = s.remaining
            reset = status.duration_until_reset
            reset.seconds, reset.nanos = s.reset_ms // 1000, (s.reset_ms % 1000) * 1_000_000
    if decision.response_headers:
        response.response_headers_to_add.extend(
            [base_pb2.HeaderValue(key=k, value=v) for k, v in decision.response_headers.items()]
        )
    if decision.body:
        response.raw_body = decision.body
    if decision.over:
        # Envoy's ratelimit filter stores it as dynamic metadata (envoy.filters.http.ratelimit):
        # the 429 skips accounting's ext_proc (envoy.yaml), which never saw the request.
        response.dynamic_metadata.update(REFUSED_METADATA)
    return response


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(self, decider: Decider, announcer: Announcer | None = None) -> None:
        self._decider = decider
        self._announcer = announcer
        self._failures = 0  # since the last warning; one warning per second at most
        self._warned_at = float("-inf")

    async def ShouldRateLimit(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        started = time.perf_counter()
        typed = to_request(request)
        try:
            decision = await self._decider.decide(typed)
        except StoreUnavailable as exc:
            metrics.DECISIONS.labels(typed.domain, "error", tenant_of(typed)).inc()
            self._failures += 1
            if started - self._warned_at >= 1.0:
                _log.warning(
                    "redis unavailable, failing closed",
                    domain=typed.domain,
                    error=str(exc),
                    failures=self._failures,
                )
                self._failures, self._warned_at = 0, started
            await context.abort(grpc.StatusCode.UNAVAILABLE, "rate limit store unavailable")
            raise  # unreachable: abort raises
        metrics.DECISIONS.labels(typed.domain, decision.outcome, decision.tenant).inc()
        metrics.DECISION_SECONDS.labels(typed.domain).observe(time.perf_counter() - started)
        if decision.over and self._announcer is not None:
            self._announcer.announce(typed, decision)  # authz refuses the next ones itself
        return to_response(decision)


def register(decider: Decider, announcer: Announcer | None = None) -> Any:
    def add(server: grpc.aio.Server) -> None:
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
            RateLimitServicer(decider, announcer), server
        )

    return add
