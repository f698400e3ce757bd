"""Small readers of the typed config: ``Any`` unpacking (through Envoy's wrappers) and
durations."""

from __future__ import annotations

from typing import TypeVar

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from google.protobuf import any_pb2, duration_pb2, message

M = TypeVar("M", bound=message.Message)


def unpack(value: any_pb2.Any, cls: type[M]) -> M | None:
    """``value`` as a ``cls``, or None when it holds another type."""
    msg = cls()
    return msg if value.Unpack(msg) else None


def filter_config(value: any_pb2.Any) -> any_pb2.Any:
    """An HTTP filter's own config, out of an ``ExtensionWithMatcher`` (the matcher only
    decides when the filter is skipped)."""
    wrapped = unpack(value, extension_matcher_pb2.ExtensionWithMatcher)
    return value if wrapped is None else wrapped.extension_config.typed_config


def per_route_config(value: any_pb2.Any) -> tuple[any_pb2.Any, bool]:
    """A per-route config out of route's ``FilterConfig`` wrapper, and whether that wrapper
    disables the filter."""
    wrapped = unpack(value, rc.FilterConfig)
    if wrapped is None:
        return value, False
    return wrapped.config, wrapped.disabled


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9
