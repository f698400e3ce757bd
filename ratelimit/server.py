"""The gRPC edge of the RLS: Envoy's RateLimitRequest in, RateLimitResponse out. Nothing else."""

from __future__ import annotations

import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import duration_pb2

from gateway import logs
from ratelimit import metrics
from ratelimit.announce import Announcer
from ratelimit.decide import Decider, Decision, tenant_of
from ratelimit.descriptors import Descriptor, Limit, RateLimitRequest, Unit
from ratelimit.windows import WindowsUnavailable

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
_log = logs.get("ratelimit")
_Response = rls_pb2.RateLimitResponse


def to_request(message: Any) -> RateLimitRequest:
    descriptors = []
    for d in message.descriptors:
        limit = None
        if d.HasField("limit") and d.limit.unit != ratelimit_unit_pb2.UNKNOWN:
            unit = Unit(ratelimit_unit_pb2.RateLimitUnit.Name(d.limit.unit))
            limit = Limit(d.limit.requests_per_unit, unit)
        descriptors.append(
            Descriptor(
                entries=tuple((e.key, e.value) for e in d.entries),
                limit=limit,
                hits_addend=d.hits_addend.value if d.HasField("hits_addend") else None,
            )
        )
    return RateLimitRequest(
        domain=message.domain, descriptors=tuple(descriptors), hits_addend=message.hits_addend
    )


# Dynamic metadata of a refusal (docs/CONTRACTS.md).
REFUSED_METADATA = {"refused": True}


def _duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def to_response(decision: Decision) -> Any:
    statuses = []
    for s in decision.statuses:
        status = _Response.DescriptorStatus(code=_Response.OVER_LIMIT if s.over else _Response.OK)
        if s.limit is not None:
            status.current_limit.CopyFrom(
                _Response.RateLimit(
                    requests_per_unit=s.limit.requests_per_unit,
                    unit=_Response.RateLimit.Unit.Value(s.limit.unit.value),
                )
            )
            status.limit_remaining = s.remaining
            status.duration_until_reset.CopyFrom(_duration(s.reset_ms))
        statuses.append(status)
    response = _Response(
        overall_code=_Response.OVER_LIMIT if decision.over else _Response.OK,
        statuses=statuses,
        response_headers_to_add=[
            base_pb2.HeaderValue(key=k, value=v) for k, v in decision.response_headers.items()
        ],
        raw_body=decision.body,
    )
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
        except WindowsUnavailable as exc:
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
