-- neuronetz-gateway: when each API key was last used (the admin API's ApiKey.last_used_at). The
-- start of the newest request the key authenticated (allowed or refused after the key check:
-- a budget, a rate, a model not allowed), written by accounting with each audit batch. A wrong
-- secret under a real prefix never touches it: such a request has no tenant. NULL: never used
-- (or not since this migration).
ALTER TABLE gateway.api_keys
    ADD COLUMN last_used_at timestamptz;
