-- neuronetz-gateway: gateway.audit_log becomes range-partitioned on ts (one partition per UTC
-- day), so old audit rows go by dropping a partition (NZ_AUDIT_RETENTION_DAYS), never by a
-- large DELETE. It also gains `count`: how many requests the row stands for (1, or the size of
-- an aggregate of unauthenticated denials — docs/ACCOUNTING.md).
--
-- This migration creates the partitioned table with a DEFAULT partition (an insert never fails
-- for lack of a day partition) and copies every existing row into it, in the migration's
-- transaction. The day partitions are not made here: gateway/auditparts.py owns that rule;
-- accounting runs it at start and periodically (and `neuronetz-gateway audit retention` runs
-- it on demand), moving the copied rows into their days and dropping those past the retention.

ALTER TABLE gateway.audit_log RENAME TO audit_log_0001;
ALTER TABLE gateway.audit_log_0001 RENAME CONSTRAINT audit_log_pkey TO audit_log_0001_pkey;
DROP INDEX gateway.audit_log_ts_brin;
DROP INDEX gateway.audit_log_tenant_ts_idx;
DROP INDEX gateway.audit_log_key_ts_idx;

-- Every request, allowed or denied. The primary key includes the partition key (Postgres
-- requires it); a request keeps its id and its start time when a batch is retried, so writes
-- stay idempotent.
CREATE TABLE gateway.audit_log (
    request_id       text NOT NULL,
    ts               timestamptz NOT NULL,
    tenant_id        uuid,
    key_prefix       text,
    method           text NOT NULL DEFAULT '',
    endpoint         text NOT NULL DEFAULT '',
    model            text NOT NULL DEFAULT '',
    status           integer NOT NULL,
    tokens_in        bigint,
    tokens_out       bigint,
    tokens_estimated boolean NOT NULL DEFAULT false,
    latency_ms       double precision,
    bytes_in         bigint,
    bytes_out        bigint,
    client_ip        text,
    response_flags   text NOT NULL DEFAULT '',
    error            text,
    written_at       timestamptz NOT NULL DEFAULT now(),
    count            integer NOT NULL DEFAULT 1 CHECK (count > 0),
    PRIMARY KEY (request_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE gateway.audit_log_default PARTITION OF gateway.audit_log DEFAULT;

CREATE INDEX audit_log_ts_brin ON gateway.audit_log USING brin (ts);
CREATE INDEX audit_log_tenant_ts_idx ON gateway.audit_log (tenant_id, ts);
CREATE INDEX audit_log_key_ts_idx ON gateway.audit_log (key_prefix, ts);

INSERT INTO gateway.audit_log (request_id, ts, tenant_id, key_prefix, method, endpoint, model,
    status, tokens_in, tokens_out, tokens_estimated, latency_ms, bytes_in, bytes_out, client_ip,
    response_flags, error, written_at)
SELECT request_id, ts, tenant_id, key_prefix, method, endpoint, model, status, tokens_in,
       tokens_out, tokens_estimated, latency_ms, bytes_in, bytes_out, client_ip, response_flags,
       error, written_at
  FROM gateway.audit_log_0001;

DROP TABLE gateway.audit_log_0001;
