"""The bounded batch writer, deny mode's rule, audit rows from Envoy's access-log entries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format, struct_pb2

from accounting import server, spool
from accounting.audit import AuditRows, row_from_entry
from accounting.batches import Batcher
from accounting.denymode import DenyMode
from accounting.ledger import LedgerRow
from accounting.recent import Recent
from accounting.stream import Outcome, RequestInfo, StreamAccount

TENANT = "6f1c7f0e-8d0a-4a55-9a53-8f8e7a0c2b11"


class FlakyStore:
    def __init__(self) -> None:
        self.down = False
        self.rows: list[int] = []
        self.calls = 0

    async def write(self, batch: list[int]) -> None:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        self.rows.extend(batch)


def batcher(store: FlakyStore, **kw: Any) -> Batcher[int]:
    options: dict[str, Any] = {
        "capacity": 5,
        "overflow": 2,
        "batch_max": 3,
        "interval_s": 0.01,
        **kw,
    }
    return Batcher("t", store.write, **options)


async def test_rows_wait_while_the_store_is_down_and_are_written_once_after() -> None:
    store = FlakyStore()
    rows = batcher(store)
    store.down = True
    for i in range(7):
        assert rows.add(i)
    assert rows.full
    assert not rows.add(99)  # past capacity + overflow: dropped
    with pytest.raises(OSError):
        await rows.flush_once()
    assert len(rows) == 7 and not rows.healthy
    store.down = False
    assert await rows.drain(1.0)
    assert store.rows == list(range(7))  # in order, each once


async def test_run_loop_retries_until_the_store_returns() -> None:
    store = FlakyStore()
    rows = batcher(store, eager=True)
    task = asyncio.create_task(rows.run())
    try:
        store.down = True
        rows.add(1)
        await asyncio.sleep(0.1)
        assert store.rows == []
        store.down = False
        for _ in range(100):
            if store.rows:
                break
            await asyncio.sleep(0.02)
        assert store.rows == [1]
    finally:
        task.cancel()


async def test_eager_writer_does_not_wait_for_the_interval() -> None:
    store = FlakyStore()
    rows = batcher(store, eager=True, interval_s=60)
    task = asyncio.create_task(rows.run())
    try:
        await asyncio.sleep(0)
        rows.add(7)
        for _ in range(50):
            if store.rows:
                break
            await asyncio.sleep(0.01)
        assert store.rows == [7]
    finally:
        task.cancel()


class FakeBuffer:
    def __init__(self, size: int, capacity: int = 10) -> None:
        self.table = "x"
        self.capacity = capacity
        self.size = size

    def __len__(self) -> int:
        return self.size


async def test_drain_at_shutdown_waits_for_the_batch_the_writer_has_in_flight() -> None:
    release = asyncio.Event()
    written: list[int] = []

    async def slow(batch: list[int]) -> None:
        await release.wait()  # a write that hangs (Postgres slow to answer)
        written.extend(batch)

    rows: Batcher[int] = Batcher(
        "t", slow, capacity=10, overflow=0, batch_max=10, interval_s=0.01, eager=True
    )
    writer = asyncio.create_task(rows.run())
    rows.add(1)
    await asyncio.sleep(0.05)  # the writer has taken the row: the buffer looks empty
    assert len(rows) == 0 and written == []
    draining = asyncio.create_task(rows.drain(5.0))
    await asyncio.sleep(0.05)
    assert not draining.done()  # it waits for the write in flight instead of returning
    release.set()
    assert await draining is True
    assert written == [1]
    writer.cancel()


async def test_a_cancelled_write_puts_its_batch_back() -> None:
    async def hangs(batch: list[int]) -> None:
        await asyncio.Event().wait()

    rows: Batcher[int] = Batcher("t", hangs, capacity=10, overflow=0, batch_max=10, interval_s=1)
    rows.add(7)
    flushing = asyncio.create_task(rows.flush_once(force=True))
    await asyncio.sleep(0.02)
    assert len(rows) == 0
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert rows.take_all() == [7]  # to be spooled, not lost


def test_deny_mode_on_when_full_off_below_half() -> None:
    buffer = FakeBuffer(9)
    deny = DenyMode(None, [buffer], ttl_s=5, interval_s=1)  # type: ignore[arg-type]
    assert not deny.wanted()
    buffer.size = 10
    assert deny.wanted()
    deny.on = True
    buffer.size = 6
    assert deny.wanted()  # hysteresis: stays on until below half
    buffer.size = 5
    assert not deny.wanted()


def entry(metadata: dict[str, dict[str, Any]], status: int = 200) -> Any:
    msg = accesslog_pb2.HTTPAccessLogEntry()
    common = msg.common_properties
    common.start_time.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    common.duration.FromMilliseconds(1500)
    common.downstream_remote_address.CopyFrom(
        address_pb2.Address(socket_address=address_pb2.SocketAddress(address="10.1.2.3"))
    )
    common.response_flags.downstream_connection_termination = True
    common.response_flags.upstream_remote_reset = True
    for name, values in metadata.items():
        struct = struct_pb2.Struct()
        struct.update(values)
        common.metadata.filter_metadata[name].CopyFrom(struct)
    msg.request.request_method = base_pb2.POST
    msg.request.path = "/api/chat?x=1"
    msg.request.request_id = "rid-1"
    msg.request.request_body_bytes = 120
    msg.response.response_code.value = status
    msg.response.response_body_bytes = 900
    return msg


AUTHZ = {
    "tenant_id": TENANT,
    "key_prefix": "abcdefghijkl",
    "endpoint": "/api/chat",
    "model": "llama3.2:latest",
}


def test_audit_row_from_an_access_log_entry() -> None:
    row = row_from_entry(server.to_entry(entry({"envoy.filters.http.ext_authz": AUTHZ})))
    assert (row.request_id, row.method, row.endpoint, row.status) == (
        "rid-1",
        "POST",
        "/api/chat",
        200,
    )
    assert (row.tenant_id, row.key_prefix, row.model) == (TENANT, "abcdefghijkl", "llama3.2:latest")
    # The counts come from the request's observed stream (awaited), never from the log.
    assert (row.tokens_in, row.tokens_out, row.tokens_estimated) == (None, None, False)
    assert (row.latency_ms, row.bytes_in, row.bytes_out) == (1500.0, 120, 900)
    assert row.client_ip == "10.1.2.3"
    assert set(row.response_flags.split(",")) == {"UR", "DC"}
    assert row.ts == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row.awaiting_outcome


def test_denied_request_row_and_a_malformed_tenant_id() -> None:
    row = row_from_entry(
        server.to_entry(entry({"envoy.filters.http.ext_authz": {"tenant_id": "nope"}}, 401))
    )
    assert row.status == 401 and row.tenant_id is None
    assert row.tokens_in is None and row.error == "http 401"
    assert row.endpoint == "/api/chat"  # the path without its query
    assert not row.awaiting_outcome


def test_cut_stream_row_takes_its_counts_from_the_outcome() -> None:
    outcomes: Recent[Outcome] = Recent()
    rows = AuditRows(outcomes)
    row = row_from_entry(server.to_entry(entry({"envoy.filters.http.ext_authz": AUTHZ})))
    assert row.awaiting_outcome and row.tokens_in is None
    assert not rows.ready(row)  # waits (bounded) for the stream's outcome
    account = StreamAccount(RequestInfo.from_metadata("rid-1", {**AUTHZ, "stream": True}))
    account.request_body(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    frames = b'{"message": {"content": "a"}, "done": false}\n' * 3
    account.response_start(200, frames)
    account.response_chunk(frames, False)
    outcomes.put("rid-1", account.outcome(cut=True))
    assert rows.ready(row)
    assert row.tokens_out == 3 and row.tokens_estimated
    assert row.error == "stream cut short"


def test_spool_round_trip(tmp_path: Path) -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [LedgerRow(f"r{i}", stamp, TENANT, None, "m", i, 2 * i, i % 2 == 0) for i in range(3)]
    spool.save(tmp_path, "budget_ledger", rows[:2])
    spool.save(tmp_path, "budget_ledger", rows[2:])  # appends to an earlier spool
    assert spool.load(tmp_path, "budget_ledger", LedgerRow) == rows
    assert spool.load(tmp_path, "budget_ledger", LedgerRow) == []  # taken once


def test_metadata_reads_as_json_format_reads_it() -> None:
    struct = struct_pb2.Struct()
    values: dict[str, Any] = {"s": "x", "i": 3, "f": 2.5, "b": True, "n": None}
    values |= {"l": [1, "a"], "d": {"k": 1}}
    struct.update(values)
    assert server.struct_dict(struct) == json_format.MessageToDict(struct) == values
