-- neuronetz-gateway: the whole `gateway` schema.
-- Applied by `neuronetz-gateway migrate` in one transaction under an advisory lock.

CREATE SCHEMA IF NOT EXISTS gateway;

-- Tenants own keys; a key inherits every limit, budget and model rule it leaves NULL.
CREATE TABLE gateway.tenants (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    allow_all       boolean NOT NULL DEFAULT false,
    allowed_models  text[] NOT NULL DEFAULT '{}',
    allow_cloud     boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway.tenant_limits (
    tenant_id            uuid PRIMARY KEY REFERENCES gateway.tenants (id) ON DELETE CASCADE,
    requests_per_minute  integer CHECK (requests_per_minute >= 0),
    tokens_per_minute    integer CHECK (tokens_per_minute >= 0),
    max_concurrent       integer CHECK (max_concurrent >= 0),
    budget_daily         bigint CHECK (budget_daily >= 0),
    budget_monthly       bigint CHECK (budget_monthly >= 0),
    budget_total         bigint CHECK (budget_total >= 0),
    default_max_tokens   integer NOT NULL DEFAULT 1024 CHECK (default_max_tokens > 0),
    keep_alive_min_s     integer NOT NULL DEFAULT 60 CHECK (keep_alive_min_s >= 0),
    keep_alive_max_s     integer NOT NULL DEFAULT 1800 CHECK (keep_alive_max_s >= keep_alive_min_s),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway.api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES gateway.tenants (id) ON DELETE RESTRICT,
    prefix          text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z2-7]{12}$'),
    key_hash        text NOT NULL CHECK (key_hash LIKE '$argon2id$%'),
    name            text NOT NULL DEFAULT '',
    scopes          text[] NOT NULL DEFAULT '{chat,embeddings,models}',
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    expires_at      timestamptz,
    -- NULL inherits the tenant's model policy
    allow_all       boolean,
    allowed_models  text[],
    prompt_log      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    revoked_reason  text
);
CREATE INDEX api_keys_tenant_idx ON gateway.api_keys (tenant_id);

-- Per-key overrides; NULL inherits the tenant's value.
CREATE TABLE gateway.key_limits (
    key_id               uuid PRIMARY KEY REFERENCES gateway.api_keys (id) ON DELETE CASCADE,
    requests_per_minute  integer CHECK (requests_per_minute >= 0),
    tokens_per_minute    integer CHECK (tokens_per_minute >= 0),
    max_concurrent       integer CHECK (max_concurrent >= 0),
    budget_daily         bigint CHECK (budget_daily >= 0),
    budget_monthly       bigint CHECK (budget_monthly >= 0),
    budget_total         bigint CHECK (budget_total >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The source of truth for budgets: one row per accounted request (idempotent on request id).
-- Redis holds the live counters; they are rebuilt from here when Redis loses them.
CREATE TABLE gateway.budget_ledger (
    request_id   text PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    tenant_id    uuid NOT NULL REFERENCES gateway.tenants (id),
    key_id       uuid REFERENCES gateway.api_keys (id),
    model        text NOT NULL DEFAULT '',
    tokens_in    bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out   bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    estimated    boolean NOT NULL DEFAULT false
);
CREATE INDEX budget_ledger_tenant_time_idx ON gateway.budget_ledger (tenant_id, occurred_at);
CREATE INDEX budget_ledger_key_time_idx ON gateway.budget_ledger (key_id, occurred_at);

-- Every request, allowed or denied. Append-only and time-ordered: a BRIN index serves time
-- ranges cheaply on a large table; b-trees serve per-tenant and per-key reports.
CREATE TABLE gateway.audit_log (
    request_id       text PRIMARY KEY,
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
    written_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_ts_brin ON gateway.audit_log USING brin (ts);
CREATE INDEX audit_log_tenant_ts_idx ON gateway.audit_log (tenant_id, ts);
CREATE INDEX audit_log_key_ts_idx ON gateway.audit_log (key_prefix, ts);

-- Opt-in per key; rows expire and a sweeper deletes them.
CREATE TABLE gateway.prompt_log (
    request_id  text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    tenant_id   uuid NOT NULL,
    key_id      uuid,
    model       text NOT NULL DEFAULT '',
    prompt      jsonb NOT NULL,
    completion  text NOT NULL DEFAULT ''
);
CREATE INDEX prompt_log_expires_idx ON gateway.prompt_log (expires_at);

-- Revocations outbox. Any writer (the admin API, another service, a DBA) inserts a row;
-- the trigger marks the key revoked and NOTIFYs every authz replica on `key_revoked`.
CREATE TABLE gateway.revocations (
    id          bigserial PRIMARY KEY,
    key_id      uuid NOT NULL REFERENCES gateway.api_keys (id),
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION gateway.on_revocation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key_prefix text;
BEGIN
    UPDATE gateway.api_keys
       SET status = 'revoked',
           revoked_at = COALESCE(revoked_at, NEW.created_at),
           revoked_reason = COALESCE(revoked_reason, NEW.reason),
           updated_at = now()
     WHERE id = NEW.key_id
    RETURNING prefix INTO key_prefix;
    PERFORM pg_notify('key_revoked', COALESCE(key_prefix, ''));
    RETURN NEW;
END;
$$;

CREATE TRIGGER revocations_notify AFTER INSERT ON gateway.revocations
    FOR EACH ROW EXECUTE FUNCTION gateway.on_revocation();

-- Operators' changes through the admin API: what, on what, when.
CREATE TABLE gateway.admin_audit (
    id         bigserial PRIMARY KEY,
    ts         timestamptz NOT NULL DEFAULT now(),
    operation  text NOT NULL,
    target     text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX admin_audit_ts_idx ON gateway.admin_audit (ts);
