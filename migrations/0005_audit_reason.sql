-- neuronetz-gateway: each audit row says why a request was refused (issue 15). One bounded word
-- of gateway.requestmeta.Reason: authz's `reason` metadata on every reply it refuses with
-- (blocked_endpoint, scope, model_not_allowed, body_invalid, too_large, budget, concurrency,
-- rate, deny_mode, accounting_down, key_invalid, ...), `rate` for the RLS's 429, `key_invalid`
-- for the 401 Envoy's own routes answer; '' for a request nobody refused, and for every row
-- written before this migration. The client's reply is unchanged: only the record says why.
--
-- gateway.audit_log is partitioned (0002): as in 0004, the column reaches every partition it has
-- and every partition made later; a constant default fills the existing rows without a rewrite.
ALTER TABLE gateway.audit_log
    ADD COLUMN reason text NOT NULL DEFAULT '';
