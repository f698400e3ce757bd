"""Run the accounting service: Envoy's ext_proc and access-log streams on
``accounting_listen``, plus the background writers (ledger, audit, prompt log), the budget
settler, deny mode, the prompt-log sweeper and the audit log's partition maintenance."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from accounting import audit, ledger, promptlog, server, spool
from accounting.audit import AccessEntry, AuditRow, AuditRows
from accounting.batches import Batcher
from accounting.denials import DenialTally, unauthenticated
from accounting.denymode import DenyMode
from accounting.inflight import InFlight, Open, instance_name
from accounting.ledger import LedgerRow
from accounting.promptlog import PromptRow
from accounting.recent import Recent
from accounting.rlsdebit import TokenDebits
from accounting.settle import Settler
from accounting.stream import Outcome, RequestInfo
from gateway import auditparts, grpcserver, logs, metrics
from gateway.leases import Leases
from gateway.readiness import Readiness, redis_probe
from gateway.requestmeta import NAMESPACE as AUTHZ_NAMESPACE
from gateway.settings import Settings, reach
from gateway.signals import DENY_MODE_KEY
from gateway.storage import pg_pool, redis_client
from gateway.storeerrors import POSTGRES_ERRORS, REDIS_ERRORS
from gateway.tracing import interceptors as tracing_interceptors

_DRAIN_S = 10.0
# At SIGTERM, after the last observed stream ended: its access-log entry (Envoy flushes its
# gRPC access log every 0.1 s, envoy.yaml) still arrives.
_ACCESS_LOG_FLUSH_S = 1.0


async def audit_maintenance(cfg: Settings) -> None:
    """The audit log's partitions (gateway/auditparts.py): at start, then every interval. Its
    advisory lock is a session's: each run has a connection of its own to PostgreSQL itself
    (NZ_DATABASE_DIRECT_URL; a transaction pooler would unlock on another server connection)."""
    log = logs.get("accounting")
    while True:
        try:
            conn = await asyncpg.connect(cfg.direct_database_url, timeout=5, command_timeout=5)
            try:
                done = await auditparts.maintain(
                    conn,
                    retention_days=cfg.audit_retention_days,
                    ahead_days=cfg.audit_partitions_ahead_days,
                )
            finally:
                await conn.close()
            if done.created or done.dropped or done.purged_rows:
                log.info(
                    "audit partitions maintained",
                    created=done.created,
                    dropped=done.dropped,
                    moved_rows=done.moved_rows,
                    purged_rows=done.purged_rows,
                )
        except POSTGRES_ERRORS as exc:
            log.warning("audit partition maintenance failed", error=type(exc).__name__)
        await asyncio.sleep(cfg.audit_maintenance_interval_s)


async def run(cfg: Settings) -> None:
    logs.configure("accounting", cfg.log_level)
    log = logs.get("accounting")
    health = grpcserver.Health()  # its gRPC server's: /readyz answers from it
    metrics.serve(cfg.metrics_port, cfg.metrics_addr, health.serving)
    # min_size 0: accounting starts (and buffers) even while Postgres is down.
    pool = await pg_pool(cfg, min_size=0, max_size=8)
    redis = redis_client(cfg.redis_url, max(cfg.redis_timeout_s, 1.0), cfg.redis_cluster)
    # Ready while Redis answers. Not tied to PostgreSQL: rows are buffered while it is down,
    # then deny mode refuses inference (docs/OPERATIONS.md, "Health"); NOT_SERVING on it would
    # make authz refuse inference at once. An unparsable URL never starts (gateway/settings.py).
    readiness = Readiness(health, {"redis": redis_probe(redis)})
    await readiness.check()
    outcomes: Recent[Outcome] = Recent()
    rows = AuditRows(outcomes)

    settler: Settler | None = None
    debits = TokenDebits(reach(cfg.ratelimit_target, cfg.ratelimit_listen))

    async def write_ledger(batch: list[LedgerRow]) -> None:
        await ledger.write(pool, batch)
        if settler is not None:
            settler.ledger_written(batch)

    def batcher(table: str, write: Any, ready: Any = None, eager: bool = False) -> Any:
        return Batcher(
            table,
            write,
            capacity=cfg.audit_buffer_rows,
            overflow=cfg.audit_overflow_rows,
            batch_max=cfg.audit_batch_rows,
            interval_s=cfg.audit_flush_interval_s,
            ready=ready,
            eager=eager,
        )

    # The ledger is written eagerly: a budget settles only once its row is in Postgres, and
    # until then the request's (larger) reservation still counts.
    ledger_rows: Batcher[LedgerRow] = batcher("budget_ledger", write_ledger, eager=True)
    audit_rows: Batcher[AuditRow] = batcher("audit_log", partial(audit.write, pool), rows.ready)
    prompt_rows: Batcher[PromptRow] = batcher("prompt_log", partial(promptlog.write, pool))
    inflight = InFlight(redis, instance_name(cfg.instance, cfg.worker_index))
    settler = Settler(
        redis,
        ledger_rows,
        prompt_rows,
        outcomes,
        ledger.row_from_outcome,
        partial(promptlog.row_from_outcome, ttl_s=cfg.prompt_log_ttl_s),
        ledger_wait_s=cfg.ledger_wait_s,
        leases=Leases(cfg.slot_lease_s, cfg.reservation_lease_s),
        debits=debits,
        inflight=inflight,
    )
    spool_dir = Path(cfg.accounting_spool_dir) if cfg.accounting_spool_dir else None
    buffers: list[tuple[Batcher[Any], type[Any]]] = [
        (ledger_rows, LedgerRow),
        (audit_rows, AuditRow),
        (prompt_rows, PromptRow),
    ]
    if spool_dir is not None:
        for batcher_, cls in buffers:
            restored: list[Any] = spool.load(spool_dir, batcher_.table, cls)
            for row in restored:
                batcher_.add(row)
            if restored:
                log.info("spooled rows restored", table=batcher_.table, rows=len(restored))
    deny = DenyMode(redis, [audit_rows, ledger_rows], cfg.deny_mode_ttl_s, interval_s=0.5)

    # Requests without a tenant are audited in aggregate (accounting/denials.py).
    denials = DenialTally(cfg.audit_denial_keys_per_minute)

    processor = server.ExternalProcessor(settler.submit, settler.track, settler.untrack)

    def accept(entry: AccessEntry) -> None:
        if entry.response_flags:
            processor.ended_short(entry.request_id)
        row = audit.row_from_entry(entry)
        if unauthenticated(row):
            denials.add(row)
        else:
            audit_rows.add(row)
        if audit.refused_after_admission(entry):
            settler.give_back(
                RequestInfo.from_metadata(entry.request_id, entry.metadata.get(AUTHZ_NAMESPACE, {}))
            )

    def audit_adopted(entry: Open, outcome: Outcome) -> None:
        started = datetime.fromtimestamp(entry.started, UTC)
        audit_rows.add(audit.row_from_orphan(started, outcome))

    tasks = [
        asyncio.create_task(job, name=name)
        for name, job in (
            ("settler", settler.run()),
            ("leases", settler.renew_leases()),
            ("tpm_debits", debits.run()),
            ("inflight", settler.snapshots()),
            ("recover", settler.recover()),
            ("adopt", settler.adopt(audit_adopted)),
            ("ledger", ledger_rows.run()),
            ("audit", audit_rows.run()),
            ("prompt_log", prompt_rows.run()),
            ("deny_mode", deny.run()),
            ("sweeper", promptlog.sweeper(pool, cfg.prompt_log_sweep_interval_s)),
            ("denials", denials.run(audit_rows.add, cfg.audit_flush_interval_s)),
            ("audit_partitions", audit_maintenance(cfg)),
            ("readiness", readiness.run()),
        )
    ]
    grpc_server = await grpcserver.start(
        cfg.accounting_listen,
        server.register(processor, accept),
        [server.EXT_PROC_SERVICE, server.ACCESS_LOG_SERVICE],
        reuse_port=cfg.worker,
        health=health,
        interceptors=tracing_interceptors("accounting", cfg.otlp_endpoint),
    )
    log.info("serving", listen=cfg.accounting_listen)

    async def stop() -> None:
        # NOT_SERVING first: authz admits no more inference. In a pod Envoy has drained and
        # exited before this process gets SIGTERM (native sidecars), so no stream is open.
        # Otherwise the server keeps serving Envoy for the streams still open, up to the
        # grace, and for their access-log entries: Envoy sends those on a new stream once it
        # has seen the server go away, and a stopped server would refuse it (row lost).
        log.info("stopping", open_streams=len(inflight.open))
        await health.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.accounting_stop_grace_s
        while inflight.open and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, min(_ACCESS_LOG_FLUSH_S, deadline - loop.time())))
        await grpc_server.stop(grace=0)  # a stream still open now is cut and settled as cut
        log.info("grpc stopped", streams_cut=len(inflight.open))
        # Settle what is pending, then write every buffered row before exiting, so a restart
        # loses nothing.
        await settler.wait_idle(_DRAIN_S)
        # What ended during the drain leaves the in-flight snapshot: the next accounting of
        # this instance must not settle it again.
        with contextlib.suppress(*REDIS_ERRORS):
            await inflight.snapshot()
        denials.flush(audit_rows.add)
        for batcher_, _ in buffers:
            if await batcher_.drain(_DRAIN_S / 2):
                continue
            if spool_dir is not None:
                spool.save(spool_dir, batcher_.table, batcher_.take_all())
                log.warning("rows spooled at shutdown", table=batcher_.table)
            else:
                log.error("rows lost at shutdown", table=batcher_.table, rows=len(batcher_))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if deny.on:
            await redis.delete(DENY_MODE_KEY)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await debits.flush()
        await debits.close()
        await redis.aclose()
        await pool.close()
        log.info("stopped", settlements_left=settler.pending)

    # The gRPC server is stopped by ``stop`` (its grace is a setting), not by the helper.
    await grpcserver.serve_until_signalled([], on_stop=stop)
