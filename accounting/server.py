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
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
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

# What Envoy sends for a request accounting has seen: the buffered request body (rewriting),
# the response headers and every response body chunk as it streams. Envoy's own config sends
# only request headers, so local replies of earlier filters never reach accounting.
_ACCOUNTED = processing_mode_pb2.ProcessingMode(
    request_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED,
    request_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
    response_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED,
    response_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
)


def _headers(header_map: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for hv in header_map.headers:
        value = hv.raw_value.decode("latin-1") if hv.raw_value else hv.value
        out.setdefault(hv.key.lower(), value)
    return out


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _authz_metadata(req: Any) -> dict[str, Any] | None:
    filter_metadata = req.metadata_context.filter_metadata
    if AUTHZ_NAMESPACE not in filter_metadata:
        return None
    values: dict[str, Any] = json_format.MessageToDict(filter_metadata[AUTHZ_NAMESPACE])
    return values


def _set_header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode("latin-1")),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _body_response(new_body: bytes | None, headers: dict[str, str] | None = None) -> Any:
    common = ep.CommonResponse()
    if new_body is not None:
        common.body_mutation.body = new_body
    if headers:
        common.header_mutation.set_headers.extend(_set_header(k, v) for k, v in headers.items())
    return ep.BodyResponse(response=common)


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One gRPC stream per HTTP request. ``submit`` receives the outcome (never blocks)."""

    def __init__(self, submit: Callable[[Outcome], None]) -> None:
        self._submit = submit

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        account: StreamAccount | None = None
        metadata: dict[str, Any] = {}
        submitted = False
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if account is None:
                    # authz's metadata is complete before the request reaches us; decoding it
                    # once (not on every body chunk) keeps the per-chunk cost down.
                    found = _authz_metadata(req)
                    if found:
                        metadata.update(found)
                if kind == "request_headers":
                    headers = _headers(req.request_headers.headers)
                    path = headers.get(":path", "").split("?", 1)[0]
                    info = RequestInfo.from_metadata(
                        headers.get("x-request-id", ""), {"endpoint": path, **metadata}
                    )
                    account = StreamAccount(info)
                    yield ep.ProcessingResponse(
                        request_headers=ep.HeadersResponse(), mode_override=_ACCOUNTED
                    )
                elif kind == "request_body":
                    if account is None:
                        account = StreamAccount(RequestInfo.from_metadata("", metadata))
                    new_body = account.request_body(req.request_body.body)
                    fix = None if new_body is None else {"content-length": str(len(new_body))}
                    yield ep.ProcessingResponse(request_body=_body_response(new_body, fix))
                elif kind == "response_headers":
                    if account is None:
                        # A local reply (e.g. an ext_authz denial) passing through the
                        # encoder: no request was processed, nothing to account.
                        yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
                        continue
                    headers = _headers(req.response_headers.headers)
                    status = int(headers.get(":status", "0") or 0)
                    account.response_headers(status, headers.get("content-type", ""))
                    common = ep.CommonResponse()
                    if account.strip_usage:
                        # The client's stream will be shorter than the backend's.
                        common.header_mutation.remove_headers.append("content-length")
                    response = ep.ProcessingResponse(
                        response_headers=ep.HeadersResponse(response=common)
                    )
                    if req.response_headers.end_of_stream:
                        response.dynamic_metadata.CopyFrom(_struct(account.metadata()))
                        self._submit(account.outcome(cut=False))
                        submitted = True
                    yield response
                elif kind == "response_body":
                    if account is None:
                        yield ep.ProcessingResponse(response_body=ep.BodyResponse())
                        continue
                    body = req.response_body
                    out = account.response_chunk(body.body, body.end_of_stream)
                    response = ep.ProcessingResponse(response_body=_body_response(out))
                    if body.end_of_stream or account.final:
                        response.dynamic_metadata.CopyFrom(_struct(account.metadata()))
                    if body.end_of_stream and not submitted:
                        self._submit(account.outcome(cut=False))
                        submitted = True
                    yield response
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
    submit: Callable[[Outcome], None], accept: Callable[[AccessEntry], None]
) -> list[Callable[[grpc.aio.Server], None]]:
    def add_ext_proc(server: grpc.aio.Server) -> None:
        ep_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(submit), server)

    def add_access_log(server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogService(accept), server)

    return [add_ext_proc, add_access_log]
