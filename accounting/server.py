"""The gRPC edge of accounting: Envoy's ext_proc stream and its access-log stream.

Protobuf stops here. ext_proc messages become calls on a :class:`StreamAccount`; its answers
become ProcessingResponses, sent at once (nothing in this path waits on Redis or Postgres).
Access-log entries become :class:`AccessEntry` values for the audit buffer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf import json_format, struct_pb2

from accounting.audit import AUTHZ_NAMESPACE, AccessEntry
from accounting.stream import Outcome, RequestInfo, StreamAccount
from gateway import logs

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
_log = logs.get("accounting")

# ResponseFlags booleans → Envoy's short codes (%RESPONSE_FLAGS%).
_FLAG_CODES = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}


# -- ext_proc --------------------------------------------------------------------------

# Envoy's config (envoy.yaml) sends accounting the buffered request body (with authz's
# metadata, which names the request) and every response body chunk as it streams: no headers,
# no round trip that only says "go on". The first response chunk carries the status as the
# ``response.code`` attribute; the framing follows from the request; Envoy itself drops the
# content-length of a body accounting may change (streamed response, request headers sent on
# before the body). Local replies of the filters before ext_proc never reach accounting: a
# matcher in envoy.yaml skips the filter for requests authz did not admit or the RLS refused.
_ATTRIBUTES = "envoy.filters.http.ext_proc"
_STATUS = "response.code"


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _status(req: Any) -> int:
    """The response status from the message's attributes (0: not sent)."""
    if _ATTRIBUTES not in req.attributes:
        return 0
    value = req.attributes[_ATTRIBUTES].fields.get(_STATUS)
    return int(value.number_value) if value is not None else 0


def _request_info(req: Any) -> RequestInfo:
    """What authz decided about the request, from its metadata (forwarded by Envoy with every
    message); authz's ``request_id`` is Envoy's x-request-id."""
    filter_metadata = req.metadata_context.filter_metadata
    values: dict[str, Any] = {}
    if AUTHZ_NAMESPACE in filter_metadata:
        values = json_format.MessageToDict(filter_metadata[AUTHZ_NAMESPACE])
    request_id = values.get("request_id")
    return RequestInfo.from_metadata(request_id if isinstance(request_id, str) else "", values)


def _body_response(new_body: bytes | None) -> Any:
    common = ep.CommonResponse()
    if new_body is not None:
        common.body_mutation.body = new_body
    return ep.BodyResponse(response=common)


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One gRPC stream per HTTP request. ``submit`` receives the outcome, ``touch`` each live
    stream as its bytes flow (it renews the request's leases); neither blocks."""

    def __init__(
        self,
        submit: Callable[[Outcome], None],
        touch: Callable[[StreamAccount], None] | None = None,
    ) -> None:
        self._submit = submit
        self._touch = touch or (lambda _account: None)

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        account: StreamAccount | None = None
        submitted = False
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if kind == "request_body":
                    if account is None:
                        account = StreamAccount(_request_info(req))
                    new_body = account.request_body(req.request_body.body)
                    self._touch(account)
                    yield ep.ProcessingResponse(request_body=_body_response(new_body))
                elif kind == "response_body":
                    body = req.response_body
                    if account is None:
                        # A response to a request accounting never saw (an error Envoy
                        # answered before the body reached ext_proc): nothing to account.
                        yield ep.ProcessingResponse(response_body=ep.BodyResponse())
                        continue
                    if not account.started:
                        account.response_start(_status(req), body.body)
                    out = account.response_chunk(body.body, body.end_of_stream)
                    if not body.end_of_stream:
                        self._touch(account)
                    response = ep.ProcessingResponse(response_body=_body_response(out))
                    if body.end_of_stream or account.final:
                        response.dynamic_metadata.CopyFrom(_struct(account.metadata()))
                    if body.end_of_stream and not submitted:
                        self._submit(account.outcome(cut=False))
                        submitted = True
                    yield response
                # Headers and trailers are never sent (processing_mode in envoy.yaml); should a
                # config send them, they pass unchanged.
                elif kind == "request_headers":
                    yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())
                elif kind == "response_headers":
                    yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
                elif kind == "request_trailers":
                    yield ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
                elif kind == "response_trailers":
                    yield ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
        finally:
            # The stream ended without its end (client gone, backend reset, timeout, Envoy
            # closed the gRPC stream): account for what was seen.
            if account is not None and not submitted and account.info.tenant_id:
                self._submit(account.outcome(cut=True))


# -- access log ------------------------------------------------------------------------


def _flags(flags: Any) -> str:
    codes = [code for name, code in _FLAG_CODES.items() if getattr(flags, name, False)]
    if flags.HasField("unauthorized_details"):
        codes.append("UAEX")
    return ",".join(codes)


def _ms(duration: Any) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1e6)


def to_entry(entry: Any) -> AccessEntry:
    common = entry.common_properties
    request = entry.request
    response = entry.response
    metadata = {
        name: json_format.MessageToDict(struct)
        for name, struct in common.metadata.filter_metadata.items()
    }
    if common.HasField("duration"):
        duration_ms: float | None = _ms(common.duration)
    elif common.HasField("time_to_last_downstream_tx_byte"):
        duration_ms = _ms(common.time_to_last_downstream_tx_byte)
    else:
        duration_ms = None
    start = (
        common.start_time.ToDatetime(tzinfo=UTC)
        if common.HasField("start_time")
        else datetime.now(UTC)
    )
    method = base_pb2.RequestMethod.Name(request.request_method)
    return AccessEntry(
        request_id=request.request_id,
        start=start,
        method="" if method == "METHOD_UNSPECIFIED" else method,
        path=request.path,
        status=response.response_code.value if response.HasField("response_code") else 0,
        duration_ms=duration_ms,
        bytes_in=request.request_body_bytes,
        bytes_out=response.response_body_bytes,
        client_ip=common.downstream_remote_address.socket_address.address,
        response_flags=_flags(common.response_flags),
        metadata=metadata,
        details=response.response_code_details,
        # Logged only if envoy.yaml names it (additional_response_headers_to_log).
        grpc_status=response.response_headers.get("grpc-status", ""),
    )


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self, accept: Callable[[AccessEntry], None]) -> None:
        self._accept = accept

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                if entry.common_properties.intermediate_log_entry:
                    continue
                try:
                    self._accept(to_entry(entry))
                except Exception as exc:  # one bad entry must not end the stream
                    _log.error("access log entry rejected", error=repr(exc))
        return als_pb2.StreamAccessLogsResponse()


def register(
    submit: Callable[[Outcome], None],
    accept: Callable[[AccessEntry], None],
    touch: Callable[[StreamAccount], None] | None = None,
) -> list[Callable[[grpc.aio.Server], None]]:
    def add_ext_proc(server: grpc.aio.Server) -> None:
        processor = ExternalProcessor(submit, touch)
        ep_grpc.add_ExternalProcessorServicer_to_server(processor, server)

    def add_access_log(server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogService(accept), server)

    return [add_ext_proc, add_access_log]
