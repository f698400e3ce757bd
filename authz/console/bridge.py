"""The console's JSON bridge to the admin API.

``POST /console/api/<Method>`` with a JSON body becomes the AdminService call of that name over a
loopback gRPC channel, carrying the caller's ``authorization`` header as its metadata; the answer
goes back as JSON (protobuf's JSON mapping, field names as in the .proto).

Everything that matters stays the admin API's: its interceptor checks the token, its servicer
validates the request, its log records the call. The bridge adds no check of its own and no
other path to the data. It only refuses every method outside :data:`READ_METHODS` (so nothing
mutating is ever reachable from the page) and turns gRPC status codes into HTTP statuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor

from protos.neuronetz.admin.v1 import admin_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]

# What the console reads. Never a method that changes anything: tests/unit/test_console_bridge.py
# holds this list to the AdminService methods that only read.
READ_METHODS = frozenset(
    {
        "GetTenant",
        "ListTenants",
        "GetKey",
        "ListKeys",
        "GetBudget",
        "ListModels",
        "GetEffectiveModels",
        "GetUsage",
        "ProbeBackends",
    }
)

# gRPC status → HTTP status (as grpc-gateway maps them)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_CALL_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


def failure(code: grpc.StatusCode, message: str) -> Answer:
    """An error in the admin CLI's shape: ``{"error": {"code": "NOT_FOUND", "message": …}}``."""
    return Answer(HTTP_STATUS.get(code, 500), {"error": {"code": code.name, "message": message}})


def not_a_console_method(name: str) -> Answer:
    allowed = ", ".join(sorted(READ_METHODS))
    return failure(
        grpc.StatusCode.NOT_FOUND,
        f"{name} is not a console method: the console reads only ({allowed})",
    )


def bridged(name: str) -> MethodDescriptor | None:
    """The AdminService method ``name`` when the console may call it, else None."""
    if name not in READ_METHODS:
        return None
    return SERVICE.methods_by_name.get(name)


def metadata(authorization: str | None) -> tuple[tuple[str, str], ...]:
    """The caller's ``authorization`` header as gRPC metadata, unchanged. A value gRPC cannot
    carry (not printable ASCII) is not forwarded: the admin API then answers for it (401)."""
    if not authorization or not all(" " <= c <= "~" for c in authorization):
        return ()
    return (("authorization", authorization),)


def parse_request(method: MethodDescriptor, body: bytes) -> Any:
    """The method's request message from a JSON object (empty body: an empty request); raises
    ValueError naming what is wrong."""
    request = message_factory.GetMessageClass(method.input_type)()
    if not body.strip():
        return request
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the body is not a JSON object ({method.input_type.name})")
    try:
        json_format.ParseDict(value, request)
    except json_format.ParseError as exc:
        raise ValueError(f"the body is not a {method.input_type.name}: {exc}") from None
    return request


def to_json(response: Any) -> dict[str, Any]:
    """protobuf's JSON mapping with the .proto's field names, every field present, and 64-bit
    numbers as JSON numbers (the admin CLI prints the same)."""
    found: dict[str, Any] = json_format.MessageToDict(
        response,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return found


class Bridge:
    """Calls the admin API at ``channel`` for the console's requests."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = _CALL_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._calls: dict[str, Any] = {}
        for name in READ_METHODS:
            method = SERVICE.methods_by_name[name]
            response_class = message_factory.GetMessageClass(method.output_type)
            self._calls[name] = channel.unary_unary(
                f"/{SERVICE.full_name}/{name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )

    async def call(self, name: str, body: bytes, authorization: str | None) -> Answer:
        method = bridged(name)
        if method is None:
            return not_a_console_method(name)
        try:
            request = parse_request(method, body)
        except ValueError as exc:
            return failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            response = await self._calls[name](
                request, metadata=metadata(authorization), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return failure(exc.code(), exc.details() or exc.code().name)
        return Answer(200, to_json(response))
