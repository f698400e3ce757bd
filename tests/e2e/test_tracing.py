"""Tracing on (docs/PLATFORM.md, "Tracing"): one request through the gateway is one trace, with
spans from Envoy and from each of the three services, received by an OTLP collector (here an
in-process OTLP gRPC receiver, as a platform's collector would receive them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from devstack.stack import Stack
from tests.e2e.test_accounting_helpers import CHAT
from tests.gateway_client import Gateway, beside
from tests.polling import poll

CHECK = "/envoy.service.auth.v3.Authorization/Check"
SHOULD_RATE_LIMIT = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
SERVICE_SPANS = {("authz", CHECK), ("ratelimit", SHOULD_RATE_LIMIT), ("accounting", PROCESS)}
# Envoy batches its spans (5 s by default) and the services theirs (0.2 s in the dev stack).
ARRIVAL_S = 30.0


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, str]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        received = [
            Span(
                service=_service_name(resource_spans.resource),
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes={a.key: a.value.string_value for a in span.attributes},
            )
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)


def _service_name(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value)
    return ""


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(stack: Stack, collector: tuple[Collector, int]) -> Iterator[Gateway]:
    with beside(
        stack,
        otlp_endpoint=f"127.0.0.1:{collector[1]}",
    ) as running:
        yield running


def test_one_request_is_one_trace_with_spans_from_envoy_and_every_service(
    traced: Gateway, collector: tuple[Collector, int]
) -> None:
    receiver = collector[0]
    who = traced.caller()
    body = {**CHAT, "stream": False}
    resp = httpx.post(f"{traced.url}/api/chat", json=body, headers=who.headers, timeout=30)
    assert resp.status_code == 200

    def whole_trace() -> list[Span] | None:
        """The request's trace once every component's span and each one's parent arrived."""
        spans = receiver.spans()
        for trace_id in {s.trace_id for s in spans if s.service == "envoy"}:
            mine = [s for s in spans if s.trace_id == trace_id]
            names = {(s.service, s.name) for s in mine}
            ids = {s.span_id for s in mine}
            parents = {s.parent_span_id for s in mine if s.parent_span_id}
            if names >= SERVICE_SPANS and parents <= ids:
                return mine
        return None

    trace = poll(whole_trace, ARRIVAL_S, 0.2, what="spans of every component under one trace id")
    by_id = {s.span_id: s for s in trace}
    (root,) = [s for s in trace if not s.parent_span_id]
    assert (root.service, root.name) == ("envoy", "ingress")
    # Each service continues the span of Envoy's call to it (the traceparent it was sent).
    for span in trace:
        if span.service != "envoy":
            assert by_id[span.parent_span_id].service == "envoy", span
    # ... and Envoy's call upstream, to the model server, is a span of the trace too.
    assert any(s.attributes.get("upstream_cluster") == "ollama" for s in trace if s is not root)
    # Every span the stack exported belongs to the one request it served.
    assert {s.trace_id for s in receiver.spans()} == {root.trace_id}
