"""The gRPC edge of authz: Envoy's CheckRequest in, CheckResponse out. Nothing else here."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from authz.check import Authorizer
from authz.decision import Allow, Decision, deny
from authz.request import AuthzRequest
from gateway import logs
from gateway.requestmeta import Reason

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


def _fill(struct: struct_pb2.Struct, values: dict[str, Any]) -> None:
    """``struct.update(values)`` for what the metadata holds (strings, numbers, booleans,
    nested dicts) without protobuf's generic per-value dispatch; anything else goes through
    protobuf's own conversion."""
    fields = struct.fields
    for name, value in values.items():
        if isinstance(value, str):
            fields[name].string_value = value
        elif isinstance(value, bool):
            fields[name].bool_value = value
        elif isinstance(value, int | float):
            fields[name].number_value = value
        elif isinstance(value, dict):
            nested = fields[name].struct_value
            nested.SetInParent()  # an empty dict is still an (empty) struct
            _fill(nested, value)
        else:
            struct[name] = value


def _add_headers(target: Any, headers: dict[str, str]) -> None:
    """Append ``headers`` to a repeated HeaderValueOption, each overwriting what is there."""
    for name, value in headers.items():
        option = target.add(append_action=_OVERWRITE)
        option.header.key = name
        option.header.value = value


def to_response(decision: Decision) -> Any:
    """The CheckResponse, built in place (no intermediate messages copied into it)."""
    response = external_auth_pb2.CheckResponse()
    if isinstance(decision, Allow):
        response.status.code = code_pb2.OK
        ok = response.ok_response
        ok.SetInParent()
        _add_headers(ok.headers, decision.upstream_headers)
        ok.headers_to_remove.extend(decision.remove_headers)
        _add_headers(ok.response_headers_to_add, decision.response_headers)
        metadata = decision.metadata
    else:
        response.status.code = code_pb2.PERMISSION_DENIED
        denied = response.denied_response
        denied.status.code = decision.status
        _add_headers(denied.headers, decision.headers)
        denied.body = decision.body.decode("utf-8")
        # `status`: the audit row's status (Envoy logs 200 for a local reply sent as gRPC);
        # `reason`: why (the audit row's and the access log's), never in the client's reply.
        metadata = {**decision.metadata, "status": decision.status}
        if decision.reason is not None:
            metadata["reason"] = str(decision.reason)
    response.dynamic_metadata.SetInParent()
    _fill(response.dynamic_metadata, metadata)
    return response


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            req = to_request(request)
        except Exception:  # a request we cannot even read is refused, never allowed
            _log.exception("unreadable CheckRequest")
            return to_response(deny(503, "ollama", reason=Reason.ERROR))
        with logs.request(req.request_id):  # every line about this request names it
            return to_response(await self._authorizer.check(req))


def register(authorizer: Authorizer) -> Any:
    def add(server: grpc.aio.Server) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(authorizer), server
        )

    return add
