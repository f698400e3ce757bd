"""The gRPC edge of accounting: Envoy's ext_proc stream and its access-log stream.

Protobuf stops here. ext_proc messages become calls on a :class:`StreamAccount`; its answers
(rewrite streams only) become ProcessingResponses, sent at once (nothing in this path waits on
Redis or Postgres).
Access-log entries become :class:`AccessEntry` values for the audit buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from prometheus_client import Counter

from accounting import showfields
from accounting.audit import CUT_GRACE_S, AccessEntry
from accounting.recent import Recent
from accounting.stream import Outcome, RequestInfo, StreamAccount
from gateway import endpoints, logs
from gateway.requestmeta import NAMESPACE as AUTHZ_NAMESPACE

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

# Envoy opens two kinds of ext_proc stream to accounting (envoy.yaml):
#
# * ``nz.accounting``, for every admitted request, in observability mode: the request's
#   headers (with authz's metadata, which names the request) when it is routed, then every
#   response body chunk as it passes. Envoy never waits and ignores any answer, so none is
#   sent. The first chunk carries the status as the ``response.code`` attribute; the framing
#   follows from the request. This stream is what gets accounted.
# * ``nz.rewrite``, only for requests authz marked ``rewrite``: the buffered request body, to
#   rewrite (gateway/rewrite.py);
# * ``nz.strip``, only for OpenAI streams authz marked ``strip_usage`` (the rewrite asked the
#   backend for a usage chunk the client did not ask for): each response chunk, to drop it;
# * ``nz.show``, only on ``/api/show``: the buffered answer, without what it must never reveal
#   (:mod:`accounting.showfields`).
# Nothing is accounted on these two (``nz.accounting`` sees the backend's response before
# nz.strip changes it).
#
# Local replies of the filters before ext_proc never reach accounting: a matcher in envoy.yaml
# skips both filters for requests authz did not admit or the RLS refused.
_ATTRIBUTES = "envoy.filters.http.ext_proc"
_SHOW = next(e.path for e in endpoints.ENDPOINTS.values() if e.kind is endpoints.Kind.SHOW)
_STATUS = "response.code"
MESSAGES = Counter(
    "accounting_ext_proc_messages_total",
    "ext_proc messages received, by filter (observe: nz.accounting, rewrite, strip, show: nz.*)",
    ["stream", "kind"],
)
for _stream, _kind in (
    ("observe", "request_headers"),
    ("observe", "response_body"),
    ("rewrite", "request_body"),
    ("strip", "response_body"),
    ("show", "response_body"),
):
    MESSAGES.labels(_stream, _kind)


def _status(req: Any) -> int:
    """The response status from the message's attributes (0: not sent)."""
    if _ATTRIBUTES not in req.attributes:
        return 0
    value = req.attributes[_ATTRIBUTES].fields.get(_STATUS)
    return int(value.number_value) if value is not None else 0


def _value(value: Any) -> Any:
    """A protobuf ``Value`` as Python (as json_format reads it, at half its cost)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number: float = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None


def struct_dict(struct: Any) -> dict[str, Any]:
    """A protobuf ``Struct`` (dynamic metadata) as a dict."""
    return {name: _value(value) for name, value in struct.fields.items()}


def _request_info(req: Any) -> RequestInfo:
    """What authz decided about the request, from its metadata (forwarded by Envoy with every
    message); authz's ``request_id`` is Envoy's x-request-id."""
    filter_metadata = req.metadata_context.filter_metadata
    values: dict[str, Any] = {}
    if AUTHZ_NAMESPACE in filter_metadata:
        values = struct_dict(filter_metadata[AUTHZ_NAMESPACE])
    request_id = values.get("request_id")
    return RequestInfo.from_metadata(request_id if isinstance(request_id, str) else "", values)


def _body_response(new_body: bytes | None) -> Any:
    common = ep.CommonResponse()
    if new_body is not None:
        common.body_mutation.body = new_body
    return ep.BodyResponse(response=common)


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One gRPC stream per HTTP request and filter. ``submit`` receives the outcome of an
    observed stream; ``track`` / ``untrack`` bracket its life (its leases are renewed
    meanwhile). None of them blocks."""

    def __init__(
        self,
        submit: Callable[[Outcome], None],
        track: Callable[[RequestInfo], None] | None = None,
        untrack: Callable[[RequestInfo], None] | None = None,
    ) -> None:
        self._submit = submit
        self._track = track or (lambda _info: None)
        self._untrack = untrack or (lambda _info: None)
        # Prompts of prompt-logged requests, from their rewrite stream to their observed one
        # (Envoy opens both on the worker's one connection to this process).
        self._prompts: Recent[Any] = Recent(ttl_s=900.0, max_entries=10_000)
        self._open: dict[str, asyncio.Task[Any]] = {}  # observed streams, by request id

    def ended_short(self, request_id: str, grace_s: float = CUT_GRACE_S) -> None:
        """Envoy logged the request as ended short (client gone, reset, timeout: its access
        log entry has response flags). Its observed stream, if still open, is closed after
        ``grace_s`` (time to read chunks already sent) and accounted as cut: Envoy would hold
        it open for its deferred_close_timeout. Never waits."""
        task = self._open.get(request_id)
        if task is not None:
            asyncio.get_running_loop().call_later(grace_s, self._close, request_id, task)

    def _close(self, request_id: str, task: asyncio.Task[Any]) -> None:
        if self._open.get(request_id) is task:
            task.cancel()

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        first = await anext(request_iterator, None)
        if first is None:
            return
        info = _request_info(first)
        with logs.request(info.request_id):  # every log line of this stream names its request
            if first.observability_mode:
                await self._observe(info, first, request_iterator)
                return
            async for response in self._mutate(first, request_iterator):
                yield response

    # -- nz.accounting: observed, never answered --------------------------------------

    async def _observe(self, info: RequestInfo, first: Any, rest: AsyncIterator[Any]) -> None:
        account = StreamAccount(info)
        self._track(info)
        task = asyncio.current_task()
        if info.request_id and task is not None:
            self._open[info.request_id] = task
        submitted = False
        try:
            req: Any = first
            while req is not None:
                kind = req.WhichOneof("request")
                MESSAGES.labels("observe", kind).inc()
                if kind == "response_body":
                    body = req.response_body
                    if not account.started:
                        account.response_start(_status(req), body.body)
                    account.response_chunk(body.body, body.end_of_stream)
                    if body.end_of_stream:
                        self._finish(account, cut=False)
                        submitted = True
                        return
                req = await anext(rest, None)
        finally:
            # The stream ended without its end (client gone, backend reset, timeout, Envoy
            # closed the gRPC stream, :meth:`ended_short`): account for what was seen.
            self._open.pop(info.request_id, None)
            if not submitted:
                self._finish(account, cut=True)

    def _finish(self, account: StreamAccount, cut: bool) -> None:
        info = account.info
        self._untrack(info)
        if not info.tenant_id:
            return
        if info.prompt_log:
            account.prompt = self._prompts.pop(info.request_id)
        self._submit(account.outcome(cut=cut))

    # -- nz.rewrite (the request body) and nz.strip (the usage chunk) ------------------

    async def _mutate(self, first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
        account: StreamAccount | None = None
        req: Any = first
        while req is not None:
            kind = req.WhichOneof("request")
            if kind == "request_body":
                MESSAGES.labels("rewrite", kind).inc()
                account = StreamAccount(_request_info(req))
                new_body = account.request_body(req.request_body.body)
                if account.info.prompt_log:
                    self._prompts.put(account.info.request_id, account.prompt)
                yield ep.ProcessingResponse(request_body=_body_response(new_body))
            elif kind == "response_body" and _request_info(req).endpoint == _SHOW:
                MESSAGES.labels("show", kind).inc()
                shown = showfields.strip(_status(req), req.response_body.body)
                yield ep.ProcessingResponse(response_body=_body_response(shown))
            elif kind == "response_body":
                MESSAGES.labels("strip", kind).inc()
                body = req.response_body
                if account is None:
                    account = StreamAccount(_request_info(req))
                if not account.started:
                    account.response_start(_status(req), body.body)
                out = account.response_chunk(body.body, body.end_of_stream)
                yield ep.ProcessingResponse(response_body=_body_response(out))
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
            req = await anext(rest, None)


# -- access log ------------------------------------------------------------------------


def _flags(flags: Any) -> str:
    codes = [code for name, code in _FLAG_CODES.items() if getattr(flags, name, False)]
    if flags.HasField("unauthorized_details"):
        codes.append("UAEX")
    return ",".join(codes)


def _ms(duration: Any) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1e6)


# The access log's custom tag naming the backend that answered (envoy.yaml common_config).
BACKEND_TAG = "backend"


def to_entry(entry: Any) -> AccessEntry:
    common = entry.common_properties
    request = entry.request
    response = entry.response
    metadata = {
        name: struct_dict(struct) for name, struct in common.metadata.filter_metadata.items()
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
        # envoy.yaml tags each entry with the routed host's nz.backend name (custom_tags).
        backend=common.custom_tags.get(BACKEND_TAG, ""),
        attempts=common.upstream_request_attempt_count,
        first_byte_s=(
            _ms(common.time_to_first_upstream_rx_byte) / 1000
            if common.HasField("time_to_first_upstream_rx_byte")
            else None
        ),
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
    processor: ExternalProcessor, accept: Callable[[AccessEntry], None]
) -> list[Callable[[grpc.aio.Server], None]]:
    def add_ext_proc(server: grpc.aio.Server) -> None:
        ep_grpc.add_ExternalProcessorServicer_to_server(processor, server)

    def add_access_log(server: grpc.aio.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogService(accept), server)

    return [add_ext_proc, add_access_log]
