"""Who is calling: the key and its tenant, with every limit resolved key → tenant.

A NULL on the key inherits the tenant's value; this module is the one place that rule lives
for limits, and :func:`authz.models.inherit` for the model grant (``allow_all``,
``allowed_models``), which the admin API reports too.
The body ceilings (``max_output_tokens``, ``max_num_ctx``, ``allowed_options``) resolve the same
way, and a NULL on the tenant too takes the gateway's default (:mod:`authz.fields`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from authz import fields, models


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent: int | None
    budget_daily: int | None
    budget_monthly: int | None
    budget_total: int | None


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    prefix: str
    key_hash: str
    active: bool
    expires_at: datetime | None
    scopes: frozenset[str]
    tenant_id: str
    tenant: str
    allow_all: bool
    allowed_models: frozenset[str]
    allow_cloud: bool
    prompt_log: bool
    key_limits: Limits
    tenant_limits: Limits
    default_max_tokens: int
    keep_alive_min_s: int
    keep_alive_max_s: int
    # Resolved key → tenant → default, like the model policy.
    max_output_tokens: int = fields.OUTPUT_CEILING  # the output cap never goes above this
    max_num_ctx: int | None = None  # None: the request may not set num_ctx
    allowed_options: frozenset[str] = fields.DEFAULT_OPTIONS  # besides num_predict, num_ctx

    def usable(self, now: datetime) -> bool:
        return self.active and (self.expires_at is None or self.expires_at > now)

    def limit(self, name: str) -> int | None:
        """The key's value of a limit, or the tenant's when the key leaves it NULL."""
        own: int | None = getattr(self.key_limits, name)
        return own if own is not None else getattr(self.tenant_limits, name)

    def to_json(self) -> str:
        """For the shared key cache; the argon2 hash is not needed there and is left out."""
        data: dict[str, Any] = asdict(self)
        data["key_hash"] = ""
        data["expires_at"] = None if self.expires_at is None else self.expires_at.isoformat()
        data["scopes"] = sorted(self.scopes)
        data["allowed_models"] = sorted(self.allowed_models)
        data["allowed_options"] = sorted(self.allowed_options)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Principal:
        data = json.loads(text)
        expires = data["expires_at"]
        data["expires_at"] = None if expires is None else datetime.fromisoformat(expires)
        data["scopes"] = frozenset(data["scopes"])
        data["allowed_models"] = frozenset(data["allowed_models"])
        if "allowed_options" in data:
            data["allowed_options"] = frozenset(data["allowed_options"])
        data["key_limits"] = Limits(**data["key_limits"])
        data["tenant_limits"] = Limits(**data["tenant_limits"])
        return cls(**data)


# The limits a key inherits from its tenant: the columns of gateway.key_limits (and the first
# columns of gateway.tenant_limits), in Limits' order.
LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))

PRINCIPAL_SQL = """
SELECT k.id::text AS key_id, k.prefix, k.key_hash, k.status, k.expires_at, k.scopes,
       k.allow_all AS k_allow_all, k.allowed_models AS k_models, k.prompt_log,
       t.id::text AS tenant_id, t.name AS tenant, t.status AS tenant_status,
       t.allow_all AS t_allow_all, t.allowed_models AS t_models, t.allow_cloud,
       kl.requests_per_minute AS k_requests_per_minute,
       kl.tokens_per_minute AS k_tokens_per_minute, kl.max_concurrent AS k_max_concurrent,
       kl.budget_daily AS k_budget_daily, kl.budget_monthly AS k_budget_monthly,
       kl.budget_total AS k_budget_total,
       tl.requests_per_minute AS t_requests_per_minute,
       tl.tokens_per_minute AS t_tokens_per_minute, tl.max_concurrent AS t_max_concurrent,
       tl.budget_daily AS t_budget_daily, tl.budget_monthly AS t_budget_monthly,
       tl.budget_total AS t_budget_total,
       COALESCE(tl.default_max_tokens, 1024) AS default_max_tokens,
       COALESCE(tl.keep_alive_min_s, 60) AS keep_alive_min_s,
       COALESCE(tl.keep_alive_max_s, 1800) AS keep_alive_max_s,
       COALESCE(kl.max_output_tokens, tl.max_output_tokens) AS max_output_tokens,
       COALESCE(kl.max_num_ctx, tl.max_num_ctx) AS max_num_ctx,
       COALESCE(kl.allowed_options, tl.allowed_options) AS allowed_options
  FROM gateway.api_keys k
  JOIN gateway.tenants t ON t.id = k.tenant_id
  LEFT JOIN gateway.key_limits kl ON kl.key_id = k.id
  LEFT JOIN gateway.tenant_limits tl ON tl.tenant_id = t.id
 WHERE k.prefix = $1
"""


def from_row(row: asyncpg.Record) -> Principal:
    grant = models.inherit(row["t_allow_all"], row["t_models"], row["k_allow_all"], row["k_models"])
    options = row["allowed_options"]
    return Principal(
        key_id=row["key_id"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        active=row["status"] == "active" and row["tenant_status"] == "active",
        expires_at=row["expires_at"],
        scopes=frozenset(row["scopes"]),
        tenant_id=row["tenant_id"],
        tenant=row["tenant"],
        allow_all=grant.allow_all,
        allowed_models=frozenset(grant.allowed),
        allow_cloud=row["allow_cloud"],
        prompt_log=row["prompt_log"],
        key_limits=Limits(*(row[f"k_{name}"] for name in LIMIT_FIELDS)),
        tenant_limits=Limits(*(row[f"t_{name}"] for name in LIMIT_FIELDS)),
        default_max_tokens=row["default_max_tokens"],
        keep_alive_min_s=row["keep_alive_min_s"],
        keep_alive_max_s=row["keep_alive_max_s"],
        max_output_tokens=row["max_output_tokens"] or fields.OUTPUT_CEILING,
        max_num_ctx=row["max_num_ctx"],
        allowed_options=(
            fields.DEFAULT_OPTIONS if options is None else frozenset(options) - fields.GOVERNED
        ),
    )
