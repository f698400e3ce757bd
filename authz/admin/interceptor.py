"""The admin API's gRPC server interceptor: the one place that authenticates AdminService calls,
turns failures into status codes, counts and logs them.

A missing or wrong admin token is UNAUTHENTICATED, an API without a configured token
PERMISSION_DENIED; the provisioning errors (:mod:`authz.admin.errors`) are NOT_FOUND /
ALREADY_EXISTS / INVALID_ARGUMENT; a database that cannot be reached is UNAVAILABLE; anything
else INTERNAL. Messages name what is wrong, never a secret (the token is never logged).

Only AdminService's methods are guarded: health and reflection on the same port stay callable
without a token (probes and grpcurl's ``list``). The interceptor wraps the unary handler the
servicer registered, so an exception raised inside it is still mapped here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter

from authz.admin.auth import TokenCheck, Verdict
from authz.admin.errors import AlreadyExists, InvalidArgument, NotFound
from authz.admin.servicer import SERVICE_NAME
from gateway import logs
from gateway.storeerrors import POSTGRES_DOWN
from protos.neuronetz.admin.v1 import admin_pb2 as pb

_log = logs.get("admin")
ADMIN_CALLS = Counter(
    "admin_calls_total", "admin API calls by method and status", ["method", "code"]
)
# Every method's refusals and failures exist from the start, at 0 (``increase() > 0`` sees the
# first): the codes _guard answers with besides OK.
for _method in pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name:
    for _code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE", "INTERNAL"):
        ADMIN_CALLS.labels(_method, _code)

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
Handler = grpc.RpcMethodHandler  # generic only in the type stubs: subscripted in quotes
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler[Any, Any] | None"]]

_PREFIX = f"/{SERVICE_NAME}/"
_DISABLED = "the admin API is disabled: no admin token is configured (NZ_ADMIN_TOKEN)"
_UNAUTHENTICATED = "missing or wrong admin token (authorization: Bearer <token>)"


class AdminInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenCheck) -> None:
        self.tokens = tokens

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_PREFIX):
            return handler  # not AdminService (health, reflection) or no such method
        if handler.unary_unary is None:
            # Every AdminService method is unary; one this cannot guard is not served.
            _log.error("admin_unguarded_method", method=method)
            return None
        behavior: Behavior = handler.unary_unary  # type: ignore[assignment]
        return grpc.unary_unary_rpc_method_handler(
            self._guard(method.removeprefix(_PREFIX), behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, name: str, behavior: Behavior) -> Behavior:
        """Authenticate, run, map failures to status codes, count and log (without secrets)."""

        async def call(request: Any, context: Context) -> Any:
            started = time.monotonic()
            code, message = grpc.StatusCode.OK, ""
            verdict = self.tokens.check(context.invocation_metadata() or ())
            if verdict is Verdict.DISABLED:
                code, message = grpc.StatusCode.PERMISSION_DENIED, _DISABLED
            elif verdict is Verdict.UNAUTHENTICATED:
                code, message = grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED
            else:
                try:
                    return await behavior(request, context)
                except InvalidArgument as exc:
                    code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
                except NotFound as exc:
                    code, message = grpc.StatusCode.NOT_FOUND, str(exc)
                except AlreadyExists as exc:
                    code, message = grpc.StatusCode.ALREADY_EXISTS, str(exc)
                except POSTGRES_DOWN as exc:
                    code, message = grpc.StatusCode.UNAVAILABLE, "the database is unavailable"
                    _log.warning("admin_unavailable", method=name, error=exc.__class__.__name__)
                except Exception:
                    code, message = grpc.StatusCode.INTERNAL, "internal error"
                    _log.exception("admin_failed", method=name)
                finally:
                    ADMIN_CALLS.labels(name, code.name).inc()
                    _log.info(
                        "admin_call",
                        method=name,
                        code=code.name,
                        ms=round((time.monotonic() - started) * 1000, 1),
                    )
                await context.abort(code, message)
            ADMIN_CALLS.labels(name, code.name).inc()
            _log.warning("admin_denied", method=name, code=code.name)
            await context.abort(code, message)

        return call
