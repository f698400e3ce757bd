"""What the RLS remembers between requests (converted descriptors, window keys, static matches)
never changes an answer: each request is still read and decided on its own values."""

from __future__ import annotations

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2

from gateway.rls import Descriptor, Limit, Status, Unit
from ratelimit import config
from ratelimit.decide import Decision, window_key
from ratelimit.server import to_request, to_response

_D = ratelimit_pb2.RateLimitDescriptor
_ENTRIES = [_D.Entry(key="limit", value="key_rpm"), _D.Entry(key="key_id", value="k1")]


def _request(limit: int | None, unit: int, hits: int | None) -> rls_pb2.RateLimitRequest:
    d = _D(entries=_ENTRIES)
    if limit is not None:
        d.limit.requests_per_unit = limit
        d.limit.unit = unit
    if hits is not None:
        d.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    return rls_pb2.RateLimitRequest(domain="gateway", descriptors=[d])


def test_the_same_entries_are_read_with_each_requests_own_limit_and_hits() -> None:
    seen = [
        to_request(_request(limit, unit, hits)).descriptors[0]
        for limit, unit, hits in [
            (5, ratelimit_unit_pb2.MINUTE, None),
            (5, ratelimit_unit_pb2.MINUTE, None),  # a repeat: the same answer
            (7, ratelimit_unit_pb2.HOUR, None),
            (5, ratelimit_unit_pb2.MINUTE, 0),
            (5, ratelimit_unit_pb2.MINUTE, 12),
            (None, ratelimit_unit_pb2.UNKNOWN, None),
            (5, ratelimit_unit_pb2.MINUTE, None),
        ]
    ]
    entries = (("limit", "key_rpm"), ("key_id", "k1"))
    assert seen == [
        Descriptor(entries, Limit(5, Unit.MINUTE), None),
        Descriptor(entries, Limit(5, Unit.MINUTE), None),
        Descriptor(entries, Limit(7, Unit.HOUR), None),
        Descriptor(entries, Limit(5, Unit.MINUTE), 0),
        Descriptor(entries, Limit(5, Unit.MINUTE), 12),
        Descriptor(entries, None, None),
        Descriptor(entries, Limit(5, Unit.MINUTE), None),
    ]


def test_a_window_key_depends_on_domain_and_entries_only() -> None:
    admitted = Descriptor((("limit", "key_tpm"), ("tenant_id", "t1")), Limit(9, Unit.MINUTE))
    debited = Descriptor((("limit", "key_tpm"), ("tenant_id", "t1")), Limit(9, Unit.MINUTE), 250)
    other = Descriptor((("limit", "key_tpm"), ("tenant_id", "t2")), Limit(9, Unit.MINUTE))
    assert window_key("gateway", admitted) == "nz:{t1}:rl:gateway:limit=key_tpm|tenant_id=t1"
    assert window_key("gateway", debited) == "nz:{t1}:rl:gateway:limit=key_tpm|tenant_id=t1"
    assert window_key("gateway", other) == "nz:{t2}:rl:gateway:limit=key_tpm|tenant_id=t2"
    assert window_key("other", admitted) == "nz:{t1}:rl:other:limit=key_tpm|tenant_id=t1"


def test_a_static_match_is_per_domain_whatever_was_asked_before() -> None:
    static = config.parse(
        """
domains:
  - domain: a
    descriptors: [{key: model, rate_limit: {unit: MINUTE, requests_per_unit: 3}}]
  - domain: b
    descriptors: [{key: model, rate_limit: {unit: HOUR, requests_per_unit: 4}}]
"""
    )
    entries = (("model", "m"),)
    for _ in range(2):
        assert static.match("a", entries).limit == Limit(3, Unit.MINUTE)
        assert static.match("b", entries).limit == Limit(4, Unit.HOUR)
        assert static.match("c", entries).limit is None


def test_an_empty_window_still_reports_a_zero_reset_and_its_limit() -> None:
    response = to_response(
        Decision(
            over=False,
            statuses=[Status(over=False, limit=Limit(10, Unit.DAY), remaining=10, reset_ms=0)],
        )
    )
    status = response.statuses[0]
    assert status.HasField("duration_until_reset")
    assert (status.duration_until_reset.seconds, status.duration_until_reset.nanos) == (0, 0)
    assert status.HasField("current_limit")
    assert status.current_limit.requests_per_unit == 10
    assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.DAY
    assert status.limit_remaining == 10
    assert not response.HasField("dynamic_metadata")
    assert list(response.response_headers_to_add) == []
    assert response.raw_body == b""
