"""How long every RPC a service serves takes, by service, method and status code:
``neuronetz_rpc_seconds{service, method, code}`` (a Prometheus histogram, seconds).

One interceptor (gateway/grpcserver.py puts it first on every server, so it times what the
others do too). The labels are bounded: only methods the server registered are observed (an
unknown method has no handler and is not timed), and ``code`` is a ``grpc.StatusCode`` name.
A streaming RPC (ext_proc, access logs, health ``Watch``) is timed from its start to its end:
the length of the stream.

The hot path pays one ``observe()``: the wrapped handler is built once per method and reused
(``grpcio`` hands the interceptor the same handler object for every call of a method), and
the labelled series once per method and code.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Histogram

RPC_SECONDS = Histogram(
    "neuronetz_rpc_seconds",
    "Time to serve one RPC (a stream: its whole length), by gRPC service, method and code",
    ["service", "method", "code"],
    # Check and ShouldRateLimit answer in milliseconds; ext_proc streams last a whole request.
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
        120.0,
    ),
)

Context = grpc.aio.ServicerContext[Any, Any]
Handler = grpc.RpcMethodHandler  # generic only in the type stubs: subscripted in quotes
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler[Any, Any] | None"]]
Observe = Callable[[str, float], None]


def split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: Context, failure: BaseException | None) -> str:
    """The status the client gets: the one the handler set (``abort``, ``set_code``), else
    OK for a return, CANCELLED for a cancelled call and UNKNOWN for any other exception."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failure is None:
        return "OK"
    if isinstance(failure, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _timed(behavior: Callable[..., Any], observe: Observe) -> Callable[..., Any]:
    """``behavior`` (a coroutine function or an async generator function) timed to its end."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                observe(_code(context, failure), time.perf_counter() - started)

        return stream

    async def call(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            observe(_code(context, failure), time.perf_counter() - started)

    return call


def _observer(service: str, method: str) -> Observe:
    """Observe into the (service, method, code) series; one labelled child per code, cached."""
    children: dict[str, Any] = {}

    def observe(code: str, seconds: float) -> None:
        child = children.get(code)
        if child is None:
            child = children[code] = RPC_SECONDS.labels(service, method, code)
        child.observe(seconds)

    return observe


def _wrap(handler: Handler[Any, Any], observe: Observe) -> Handler[Any, Any]:
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for behavior, make in kinds:
        if behavior is None:
            continue
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # a synchronous handler (none of ours): served untimed
        wrapped: Handler[Any, Any] = make(
            _timed(behavior, observe),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped
    return handler


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Times every call of every registered method into :data:`RPC_SECONDS`."""

    def __init__(self) -> None:
        # method -> (the handler the next interceptor or the server gave, its timed copy): an
        # interceptor behind this one that builds a new handler per call (the admin API's
        # guard) misses this cache, and pays for one handler, not for the series' lookup.
        self._wrapped: dict[str, tuple[Handler[Any, Any], Handler[Any, Any]]] = {}
        self._observers: dict[str, Observe] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # no such method: UNIMPLEMENTED, and no series for a made-up name
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        observe = self._observers.get(method)
        if observe is None:  # registered methods only: bounded
            observe = self._observers[method] = _observer(*split(method))
        wrapped = _wrap(handler, observe)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
