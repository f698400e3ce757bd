-- Ceilings on what a request body may ask of a shared model (issue 11, finding 10).
-- On a tenant, NULL takes the gateway's default: the global output ceiling, no num_ctx, the
-- sampling options. On a key, NULL inherits the tenant's value.
--   max_output_tokens: a request's output cap is clamped to this (and to the global ceiling)
--   max_num_ctx:       a request's options.num_ctx above this is refused (400)
--   allowed_options:   the Ollama options a request may set besides num_predict and num_ctx
ALTER TABLE gateway.tenant_limits
    ADD COLUMN max_output_tokens integer CHECK (max_output_tokens > 0),
    ADD COLUMN max_num_ctx integer CHECK (max_num_ctx > 0),
    ADD COLUMN allowed_options text[];

ALTER TABLE gateway.key_limits
    ADD COLUMN max_output_tokens integer CHECK (max_output_tokens > 0),
    ADD COLUMN max_num_ctx integer CHECK (max_num_ctx > 0),
    ADD COLUMN allowed_options text[];
