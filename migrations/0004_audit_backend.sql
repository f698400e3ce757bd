-- neuronetz-gateway: each audit row names the Ollama backend that answered the request and how
-- many upstream attempts Envoy made (issue 13). Envoy's access log carries both: the backend's
-- name as the `backend` custom tag (the `nz.backend` metadata of the host it routed to), the
-- attempts as upstream_request_attempt_count.
--   backend:  the backend's name from the gateway's backend list; '' when none answered (a
--             refusal, a local reply), and for every row written before this migration
--   attempts: upstream attempts: 0 none, 1 the first try, 2+ Envoy failed over (the backend
--             named is the one that answered after the others failed)
--
-- gateway.audit_log is partitioned (0002): a column added to it reaches every partition it has
-- (the DEFAULT one and the day partitions gateway/auditparts.py made) and every partition made
-- later (CREATE TABLE ... PARTITION OF takes the parent's columns). A constant default fills
-- the existing rows without rewriting them.
ALTER TABLE gateway.audit_log
    ADD COLUMN backend text NOT NULL DEFAULT '',
    ADD COLUMN attempts smallint NOT NULL DEFAULT 0 CHECK (attempts >= 0);
