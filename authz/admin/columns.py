"""What of a tenant and a key can be set: the column names of ``gateway.tenants``,
``gateway.api_keys`` and their limits tables that the admin API converts, validation checks,
the stores write and the records read."""

from __future__ import annotations

from authz.principal import LIMIT_FIELDS

KEY_LIMIT_COLUMNS = LIMIT_FIELDS  # a key's own limits: NULL inherits the tenant's
TENANT_LIMIT_COLUMNS = (
    *KEY_LIMIT_COLUMNS,
    "default_max_tokens",
    "keep_alive_min_s",
    "keep_alive_max_s",
)
# What a request body may ask for, on tenants and keys alike (NULL: the default / inherit).
CEILING_COLUMNS = ("max_output_tokens", "max_num_ctx", "allowed_options")
# Every settable column of gateway.tenant_limits and gateway.key_limits.
TENANT_SETTING_COLUMNS = (*TENANT_LIMIT_COLUMNS, *CEILING_COLUMNS)
KEY_SETTING_COLUMNS = (*KEY_LIMIT_COLUMNS, *CEILING_COLUMNS)
# Tenant columns that cannot be NULL: "clearing" one restores its default.
TENANT_DEFAULTED = frozenset(
    {"allow_all", "allowed_models", "allow_cloud", *TENANT_LIMIT_COLUMNS[len(KEY_LIMIT_COLUMNS) :]}
)
TENANT_COLUMNS = ("allow_all", "allowed_models", "allow_cloud")
KEY_COLUMNS = ("name", "scopes", "allow_all", "allowed_models", "prompt_log")
SCOPES = ("chat", "embeddings", "models")
