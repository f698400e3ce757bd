"""The audit row and the per-backend metrics name the backend that answered, from Envoy's
access-log entry (issue 13): its ``backend`` custom tag, its upstream attempts, its time to the
backend's first byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from accounting import audit, backendmetrics, server, spool
from accounting.audit import AuditRow, row_from_entry

TENANT = "6d1f8a53-7c7e-4b7b-9f39-3a0e0b6f2f10"
AUTHZ = {"tenant_id": TENANT, "key_prefix": "abcdefghijkl", "model": "llama3.2:latest"}


def als_entry(
    status: int = 200,
    backend: str | None = None,
    attempts: int = 0,
    first_byte_ms: int | None = None,
    authz: dict[str, Any] | None = None,
    details: str = "via_upstream",
) -> Any:
    msg = accesslog_pb2.HTTPAccessLogEntry()
    common = msg.common_properties
    common.start_time.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    common.duration.FromMilliseconds(900)
    if backend is not None:
        common.custom_tags["backend"] = backend
    common.upstream_request_attempt_count = attempts
    if first_byte_ms is not None:
        common.time_to_first_upstream_rx_byte.FromMilliseconds(first_byte_ms)
    struct = struct_pb2.Struct()
    struct.update(AUTHZ if authz is None else authz)
    common.metadata.filter_metadata["envoy.filters.http.ext_authz"].CopyFrom(struct)
    msg.request.request_method = base_pb2.POST
    msg.request.path = "/api/chat"
    msg.request.request_id = "rid-backend"
    msg.response.response_code.value = status
    msg.response.response_code_details = details
    return msg


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _gpu_b_samples() -> tuple[float, ...]:
    return (
        sample("accounting_backend_responses_total", backend="gpu-b", code="2xx"),
        sample("accounting_backend_failovers_total", backend="gpu-b"),
        sample("accounting_backend_first_byte_seconds_count", backend="gpu-b"),
        sample("accounting_backend_first_byte_seconds_sum", backend="gpu-b"),
        sample("accounting_backend_first_byte_seconds_bucket", backend="gpu-b", le="0.25"),
    )


def test_the_row_names_the_backend_that_answered_after_a_failover() -> None:
    before = _gpu_b_samples()
    entry = server.to_entry(als_entry(backend="gpu-b", attempts=2, first_byte_ms=250))
    assert (entry.backend, entry.attempts, entry.first_byte_s) == ("gpu-b", 2, 0.25)

    row = row_from_entry(entry)
    assert (row.backend, row.attempts, row.status) == ("gpu-b", 2, 200)
    after = _gpu_b_samples()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0.25, 1]


def test_a_first_try_counts_its_status_class_and_no_failover() -> None:
    failovers = sample("accounting_backend_failovers_total", backend="gpu-c")
    for status in (200, 404, 500):
        row = row_from_entry(
            server.to_entry(als_entry(status, backend="gpu-c", attempts=1, first_byte_ms=40))
        )
        assert (row.backend, row.attempts, row.status) == ("gpu-c", 1, status)
    for code in ("2xx", "4xx", "5xx"):
        assert sample("accounting_backend_responses_total", backend="gpu-c", code=code) >= 1
    assert sample("accounting_backend_failovers_total", backend="gpu-c") == failovers


def test_a_backend_that_never_answered_has_no_first_byte() -> None:
    # Envoy routed to gpu-d, the connection failed (UF) and it replied 503 itself.
    count = sample("accounting_backend_first_byte_seconds_count", backend="gpu-d")
    errors = sample("accounting_backend_responses_total", backend="gpu-d", code="5xx")
    entry = server.to_entry(als_entry(503, backend="gpu-d", attempts=1))
    assert entry.first_byte_s is None
    row = row_from_entry(entry)
    assert (row.backend, row.attempts, row.status) == ("gpu-d", 1, 503)
    assert sample("accounting_backend_responses_total", backend="gpu-d", code="5xx") == errors + 1
    assert sample("accounting_backend_first_byte_seconds_count", backend="gpu-d") == count


def test_a_refusal_names_no_backend_and_counts_in_no_backend_metric() -> None:
    entry = server.to_entry(als_entry(403, authz={"tenant_id": TENANT}, details="ext_authz_denied"))
    assert (entry.backend, entry.attempts, entry.first_byte_s) == ("", 0, None)
    row = row_from_entry(entry)
    assert (row.backend, row.attempts, row.status) == ("", 0, 403)
    for code in ("2xx", "4xx", "5xx", "none"):
        assert (
            REGISTRY.get_sample_value(
                "accounting_backend_responses_total", {"backend": "", "code": code}
            )
            is None
        )


def test_status_classes_stay_bounded() -> None:
    assert [backendmetrics.status_class(s) for s in (0, 101, 204, 302, 429, 503, 999)] == [
        "none",
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
    ]


def test_attempts_beyond_the_column_are_clamped_and_long_names_clipped() -> None:
    name = "b" * 300
    row = row_from_entry(server.to_entry(als_entry(backend=name, attempts=70_000)))
    assert row.attempts == audit.MAX_ATTEMPTS
    assert len(row.backend) == audit.MAX_TEXT_CHARS and row.backend.endswith(audit.CLIPPED)


def test_the_insert_writes_backend_and_attempts() -> None:
    row = row_from_entry(server.to_entry(als_entry(backend="gpu-e", attempts=3)))
    columns = audit._columns([row])
    assert audit._INSERT.count("$") == len(columns)
    assert "count, backend, attempts, reason)" in audit._INSERT
    assert columns[-3:] == [["gpu-e"], [3], [""]]


def test_a_row_spooled_before_the_backend_columns_still_loads(tmp_path: Path) -> None:
    row = row_from_entry(server.to_entry(als_entry(backend="gpu-f", attempts=2)))
    spool.save(tmp_path, "audit_log", [row])
    line = json.loads((tmp_path / "audit_log.jsonl").read_text(encoding="utf-8"))
    assert (line["backend"], line["attempts"]) == ("gpu-f", 2)
    old = {k: v for k, v in line.items() if k not in ("backend", "attempts")}
    (tmp_path / "audit_log.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")

    (loaded,) = spool.load(tmp_path, "audit_log", AuditRow)
    assert (loaded.request_id, loaded.backend, loaded.attempts) == ("rid-backend", "", 0)
    spool.save(tmp_path, "audit_log", [row])
    (again,) = spool.load(tmp_path, "audit_log", AuditRow)
    assert (again.backend, again.attempts) == ("gpu-f", 2)
