"""Audit rows store bounded text, unauthenticated denials are tallied per minute, the status of a
gRPC-shaped local reply, the day-partition names (issue 11 §3, §11)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from accounting.audit import (
    AccessEntry,
    AuditRow,
    answered_status,
    clip,
    endpoint_of,
    last_uses,
)
from accounting.denials import DenialTally
from gateway import auditparts

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def access(
    status: int = 200,
    flags: str = "",
    details: str = "via_upstream",
    grpc_status: str = "",
    authz: dict[str, Any] | None = None,
) -> AccessEntry:
    return AccessEntry(
        request_id="rid",
        start=START,
        method="POST",
        path="/api/chat",
        status=status,
        duration_ms=1.0,
        bytes_in=10,
        bytes_out=20,
        client_ip="10.0.0.1",
        response_flags=flags,
        metadata={"envoy.filters.http.ext_authz": authz or {}},
        details=details,
        grpc_status=grpc_status,
    )


def denial(ip: str = "10.0.0.1", status: int = 401, endpoint: str = "/api/chat") -> AuditRow:
    return AuditRow(
        request_id="rid",
        ts=START,
        tenant_id=None,
        key_prefix=None,
        method="POST",
        endpoint=endpoint,
        model="",
        status=status,
        tokens_in=None,
        tokens_out=None,
        tokens_estimated=False,
        latency_ms=None,
        bytes_in=3,
        bytes_out=5,
        client_ip=ip,
        response_flags="",
        error="http 401",
    )


def test_clip_keeps_short_text_and_marks_what_it_cut() -> None:
    assert clip("abc", 5) == "abc"
    assert clip("abcdef", 5) == "abcd…"
    assert clip("a\x00b", 5) == "ab"


def test_endpoint_is_the_allowlisted_path_else_clipped_or_other() -> None:
    assert endpoint_of("POST", "/api/chat?x=1", authenticated=False) == "/api/chat"
    assert endpoint_of("GET", "/v1/models/" + "m" * 500, authenticated=True) == (
        "/v1/models/{model}"
    )
    assert endpoint_of("GET", "/api/chat", authenticated=False) == "other"  # wrong method
    long = "/api/" + "x" * 1000
    assert endpoint_of("GET", long, authenticated=True) == long[:63] + "…"
    assert endpoint_of("GET", long, authenticated=False) == "other"


def test_the_status_authz_or_grpc_names_replaces_envoys_200() -> None:
    assert answered_status(access(200, "UAEX", "ext_authz_denied"), {"status": 401.0}) == 401
    assert answered_status(access(200, "UAEX", "ext_authz_denied"), {"status": 200.0}) == 200
    assert answered_status(access(200, "", "direct_response", "16"), {}) == 401
    assert answered_status(access(200, "", "direct_response", "7"), {}) == 403
    assert answered_status(access(200, "RL", "request_rate_limited", "14"), {}) == 429
    assert answered_status(access(200, "", "x", "2"), {}) == 500
    # The backend's own answer is never reinterpreted.
    assert answered_status(access(200, "", "via_upstream", "16"), {}) == 200
    assert answered_status(access(403, "UAEX", "ext_authz_denied"), {}) == 403


def taker(into: list[AuditRow]) -> Callable[[AuditRow], bool]:
    """An audit buffer that takes every row."""

    def add(row: AuditRow) -> bool:
        into.append(row)
        return True

    return add


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000 * 60.0

    def __call__(self) -> float:
        return self.now


def test_denials_are_one_row_per_minute_and_key_with_a_rising_count() -> None:
    clock = Clock()
    tally = DenialTally(keys_per_minute=100, instance="i", clock=clock)
    handed: list[AuditRow] = []
    for _ in range(5):
        tally.add(denial())
    assert tally.flush(taker(handed)) == 1
    tally.add(denial())
    tally.add(denial())
    tally.flush(taker(handed))
    assert [r.count for r in handed] == [5, 7]
    assert handed[0].request_id == handed[1].request_id
    assert handed[0].ts == datetime.fromtimestamp(clock.now, UTC)
    assert (handed[1].bytes_in, handed[1].bytes_out) == (21, 35)
    assert tally.flush(taker(handed)) == 0  # nothing changed

    clock.now += 60  # a new minute: a new row; the old minute is forgotten
    tally.add(denial())
    tally.flush(taker(handed))
    assert handed[-1].count == 1 and handed[-1].request_id != handed[0].request_id
    assert len(tally) == 1


def test_past_the_key_limit_further_addresses_share_one_row() -> None:
    tally = DenialTally(keys_per_minute=2, instance="i", clock=Clock())
    for i in range(10):
        tally.add(denial(ip=f"10.0.0.{i}"))
    rows: list[AuditRow] = []
    tally.flush(taker(rows))
    assert sorted((r.client_ip, r.count) for r in rows) == [
        ("*", 8),
        ("10.0.0.0", 1),
        ("10.0.0.1", 1),
    ]


def test_a_snapshot_the_buffer_refuses_is_offered_again() -> None:
    clock = Clock()
    tally = DenialTally(keys_per_minute=10, instance="i", clock=clock)
    tally.add(denial())
    assert tally.flush(lambda r: False) == 0
    clock.now += 120  # even after its minute
    rows: list[AuditRow] = []
    assert tally.flush(taker(rows)) == 1
    assert rows[0].count == 1
    assert len(tally) == 0


def test_while_the_buffer_refuses_the_tally_holds_a_bounded_number_of_aggregates() -> None:
    clock = Clock()
    tally = DenialTally(keys_per_minute=1, instance="i", clock=clock)
    for _ in range(12):  # Postgres down: twelve minutes, nothing taken
        tally.add(denial())
        tally.flush(lambda r: False)
        clock.now += 60
    rows: list[AuditRow] = []
    assert tally.flush(taker(rows)) == 10  # ten minutes' worth held, the rest counted dropped
    assert [r.count for r in rows] == [1] * 10


def test_day_partition_names() -> None:
    day = date(2026, 2, 28)
    assert auditparts.partition_name(day) == "audit_log_p20260228"
    assert auditparts.day_of("audit_log_p20260228") == day
    assert auditparts.day_of("audit_log_default") is None
    assert auditparts.day_of("audit_log_p20260231") is None
    assert auditparts.first_kept_day(date(2026, 3, 10), 10) == day.replace(day=28)


def test_a_keys_last_use_counts_only_requests_it_authenticated_newest_first() -> None:
    tenant = "7c1e9a52-0c1f-4b0e-9a55-1f4f0f2c1b11"
    later = START.replace(minute=30)

    def row(prefix: str | None, ts: datetime, tenant_id: str | None = tenant) -> AuditRow:
        found = denial()
        found.key_prefix, found.ts, found.tenant_id = prefix, ts, tenant_id
        return found

    rows = [
        row("zzzzzzzzzzzz", START),
        row("aaaaaaaaaaaa", later),
        row("aaaaaaaaaaaa", START),  # older: never moves the use back
        row("bbbbbbbbbbbb", later.replace(hour=9), tenant_id=None),  # no tenant: not the key's
        row(None, later),
    ]
    used = last_uses(rows)
    assert used == {"aaaaaaaaaaaa": later, "zzzzzzzzzzzz": START}
    assert list(used) == ["aaaaaaaaaaaa", "zzzzzzzzzzzz"]  # prefix order
