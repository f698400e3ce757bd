"""The gRPC edge: Envoy's messages to typed values and back, field by field."""

from __future__ import annotations

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2

from gateway.ratelimitreplies import openai_duration
from gateway.rls import Descriptor, Limit, RateLimitRequest, Status, Unit
from ratelimit.decide import Decision
from ratelimit.server import to_request, to_response

_D = ratelimit_pb2.RateLimitDescriptor
_R = rls_pb2.RateLimitResponse


def test_request_keeps_overrides_and_tells_an_explicit_zero_from_unset() -> None:
    message = rls_pb2.RateLimitRequest(
        domain="gateway",
        hits_addend=3,
        descriptors=[
            _D(
                entries=[_D.Entry(key="limit", value="key_tpm"), _D.Entry(key="key_id", value="k")],
                limit=_D.RateLimitOverride(requests_per_unit=50, unit=ratelimit_unit_pb2.HOUR),
                hits_addend=wrappers_pb2.UInt64Value(value=0),
            ),
            _D(entries=[_D.Entry(key="model", value="m")]),
            _D(
                entries=[_D.Entry(key="x", value="y")],
                hits_addend=wrappers_pb2.UInt64Value(value=42),
            ),
        ],
    )
    assert to_request(message) == RateLimitRequest(
        domain="gateway",
        hits_addend=3,
        descriptors=(
            Descriptor((("limit", "key_tpm"), ("key_id", "k")), Limit(50, Unit.HOUR), 0),
            Descriptor((("model", "m"),), None, None),
            Descriptor((("x", "y"),), None, 42),
        ),
    )


def test_response_carries_limit_remaining_reset_headers_and_body() -> None:
    decision = Decision(
        over=True,
        statuses=[
            Status(over=False),
            Status(over=True, limit=Limit(10, Unit.MINUTE), remaining=0, reset_ms=59_500),
        ],
        response_headers={"retry-after": "6"},
        body=b'{"error": "too many requests"}',
    )
    response = to_response(decision)
    assert response.overall_code == _R.OVER_LIMIT
    assert [s.code for s in response.statuses] == [_R.OK, _R.OVER_LIMIT]
    assert not response.statuses[0].HasField("current_limit")
    limited = response.statuses[1]
    assert limited.current_limit.requests_per_unit == 10
    assert limited.current_limit.unit == _R.RateLimit.MINUTE
    assert limited.limit_remaining == 0
    assert (limited.duration_until_reset.seconds, limited.duration_until_reset.nanos) == (
        59,
        500_000_000,
    )
    assert [(h.key, h.value) for h in response.response_headers_to_add] == [("retry-after", "6")]
    assert response.raw_body == b'{"error": "too many requests"}'


def test_week_unit_maps_by_name() -> None:
    response = to_response(
        Decision(over=False, statuses=[Status(over=False, limit=Limit(1, Unit.WEEK))])
    )
    assert response.statuses[0].current_limit.unit == _R.RateLimit.WEEK


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [openai_duration(ms) for ms in (0, 36, 999, 1000, 1001, 59_500, 360_000, 3_723_000)] == [
        "0ms",
        "36ms",
        "999ms",
        "1s",
        "2s",
        "1m0s",
        "6m0s",
        "1h2m3s",
    ]


def test_only_a_refusal_carries_the_refused_metadata() -> None:
    """envoy.yaml skips accounting's ext_proc for the 429 by this metadata."""
    over = to_response(Decision(over=True, statuses=[Status(over=True)]))
    assert dict(over.dynamic_metadata) == {"refused": True}
    ok = to_response(Decision(over=False, statuses=[Status(over=False)]))
    assert not ok.HasField("dynamic_metadata")
