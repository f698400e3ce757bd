"""The throttle map's wire contract: the RLS announces on Redis which key or tenant it
refuses (ratelimit/announce.py publishes), every authz replica listens (authz/throttle.py) and
refuses those requests itself until the window has room again.

The message is JSON (the schema below; ``v`` is its version)::

    {"v": 1, "at_ms": <the RLS's clock at the decision, ms since the epoch>,
     "tenant_id": "…", "key_id": "…",
     "throttled": [{"limit": "key_rpm", "rpu": 1, "retry_ms": 59000}, …],
     "statuses": [{"limit": "key_rpm", "key_id": "…", "rpu": 1, "unit_s": 60, "over": true,
                   "remaining": 0, "reset_ms": 60000, "retry_ms": 59000,
                   "quota": "requests"}, …]}

``throttled`` lists the refusing windows authz may act on: the key's (``key_rpm``,
``key_tpm``) or the tenant's (``tenant_rpm``, ``tenant_tpm``), each with the limit it was
decided under (authz ignores an announcement once its own limit differs) and the time until
the same request would be admitted. ``statuses`` are every limited status of the decision, in
Envoy's order, so authz can answer the headers Envoy and the RLS would have.
"""

from __future__ import annotations

CHANNEL = "nz:throttled"
VERSION = 1
LIMIT_ENTRY = "limit"  # the descriptor entry naming a gateway limit (docs/RATE_LIMITS.md)
KEY_ID_ENTRY = "key_id"
# The gateway's own limits: window name → (who it belongs to, what authz's override is).
KEY_LIMITS = {"key_rpm": "requests_per_minute", "key_tpm": "tokens_per_minute"}
TENANT_LIMITS = {"tenant_rpm": "requests_per_minute", "tenant_tpm": "tokens_per_minute"}


def subject(name: str, tenant_id: str, key_id: str) -> str:
    """Whose window ``name`` is: the key's id for ``key_*``, the tenant's for ``tenant_*``."""
    return key_id if name in KEY_LIMITS else tenant_id
