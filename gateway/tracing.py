"""OpenTelemetry tracing of the services' request-path RPCs, off unless ``NZ_OTLP_ENDPOINT``
names a collector (docs/PLATFORM.md, "Tracing").

Envoy starts the trace (its OpenTelemetry tracer, envoy/envoy.yaml) and sends its context as
``traceparent`` gRPC metadata on ext_authz's Check, the RLS's ShouldRateLimit and accounting's
ext_proc streams; the interceptor continues that trace, so one request is one trace id across
Envoy and the three services. Whether a request is traced is Envoy's decision (parent-based
sampling): a service never samples on its own.

Off (the default), nothing of OpenTelemetry is imported and no interceptor is installed: the
hot path pays nothing for a feature it does not use.
"""

from __future__ import annotations

from typing import Any

import grpc

# The RPCs that are one request's work (Envoy's calls for it). Not health, reflection, the
# admin API, nor the long-lived streams (authz's EDS, Envoy's access log): a span of those
# would last as long as Envoy's connection, not a request.
TRACED_SERVICES = frozenset(
    {
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ratelimit.v3.RateLimitService",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    }
)
_SCHEMES = ("http://", "https://")


def traced(method: str) -> bool:
    """``/package.Service/Method`` is one of :data:`TRACED_SERVICES`' methods."""
    return method.lstrip("/").partition("/")[0] in TRACED_SERVICES


def collector_url(endpoint: str) -> str:
    """The OTLP gRPC exporter's endpoint: ``host:port`` alone is plaintext (a collector
    sidecar or node agent); ``https://`` asks for TLS."""
    return endpoint if endpoint.startswith(_SCHEMES) else f"http://{endpoint}"


class TracingUnavailable(RuntimeError):
    """Tracing was asked for and cannot run (the service does not start)."""


def interceptors(service: str, endpoint: str) -> list[grpc.aio.ServerInterceptor]:
    """The server interceptors tracing needs: none when ``endpoint`` is empty (tracing off),
    else one that spans :data:`TRACED_SERVICES`' RPCs, after the OpenTelemetry SDK is set up
    to export them as ``service`` (authz, ratelimit, accounting) to ``endpoint``."""
    if not endpoint:
        return []
    return [_configure(service, endpoint)]


def _configure(service: str, endpoint: str) -> grpc.aio.ServerInterceptor:
    # Imported here: a service with tracing off never loads the SDK.
    from opentelemetry import trace

    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # xds-protos' older copy of the OTLP protos won the install
        raise TracingUnavailable(
            "tracing needs opentelemetry-proto's own files (xds-protos installed an older copy"
            " over them): pip install --no-deps --force-reinstall opentelemetry-proto"
        ) from exc
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "service.namespace": "neuronetz"})
    # shutdown_on_exit (the default): the spans still batched are exported at exit.
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(collector_url(endpoint))))
    trace.set_tracer_provider(provider)

    def only_traced(details: Any) -> bool:
        return traced(str(details.method))

    # The grpc instrumentation ships no type hints (no py.typed).
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=only_traced
    )
    return interceptor
