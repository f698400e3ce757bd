"""The gRPC edge of authz: Envoy's CheckRequest in, CheckResponse out. Nothing else here."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from authz.check import Authorizer
from authz.decision import Allow, Decision, deny
from authz.request import AuthzRequest
from gateway import logs

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
_log = logs.get("authz")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def to_request(check: Any) -> AuthzRequest:
    http = check.attributes.request.http
    headers: dict[str, list[str]] = {}
    if http.header_map.headers:
        for hv in http.header_map.headers:
            value = hv.raw_value.decode("latin-1") if hv.raw_value else hv.value
            headers.setdefault(hv.key.lower(), []).append(value)
    else:
        for name, value in http.headers.items():
            headers[name.lower()] = [value]
    path = http.path.split("?", 1)[0]
    body = http.raw_body or http.body.encode("utf-8")
    peer = check.attributes.source.address.socket_address.address
    return AuthzRequest(
        method=http.method,
        path=path,
        headers=headers,
        body=body,
        # Envoy's x-request-id (generated at the edge) names the request everywhere; the
        # CheckRequest's own ``id`` is Envoy's internal stream id and is not used.
        request_id=headers.get("x-request-id", [""])[0],
        client_ip=peer,
    )


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def to_response(decision: Decision) -> Any:
    if isinstance(decision, Allow):
        ok = external_auth_pb2.OkHttpResponse(
            headers=[_header(k, v) for k, v in decision.upstream_headers.items()],
            headers_to_remove=list(decision.remove_headers),
            response_headers_to_add=[_header(k, v) for k, v in decision.response_headers.items()],
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=ok,
            dynamic_metadata=_struct(decision.metadata),
        )
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=decision.status),
        headers=[_header(k, v) for k, v in decision.headers.items()],
        body=decision.body.decode("utf-8"),
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
        denied_response=denied,
        # `status`: the audit row's status (Envoy logs 200 for a local reply sent as gRPC).
        dynamic_metadata=_struct({**decision.metadata, "status": decision.status}),
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            req = to_request(request)
        except Exception:  # a request we cannot even read is refused, never allowed
            _log.exception("unreadable CheckRequest")
            return to_response(deny(503, "ollama"))
        return to_response(await self._authorizer.check(req))


def register(authorizer: Authorizer) -> Any:
    def add(server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(authorizer), server
        )

    return add
