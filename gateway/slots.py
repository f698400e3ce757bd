"""Concurrency slots in Redis: one sorted set per key and per tenant.

``nz:{<tenant_id>}:cs:k:<key_id>`` and ``nz:{<tenant_id>}:cs:t``: member = Envoy's request id,
score = the lease's expiry (epoch seconds). Members whose lease ran out are dropped before
counting, so a release that never comes (a crashed accounting, a lost stream) heals itself.
authz takes the slot (``authz/admission.py``, in the same Lua call as the budget check);
accounting renews it while the stream lives (``gateway/leases.py``) and calls :func:`release`
when the stream ends.
"""

from __future__ import annotations

from gateway.storage import Store

# A slot not released (nor renewed by its live stream, ``gateway/leases.py``) within this time
# is free again. The default of the setting ``NZ_SLOT_LEASE_S``.
LEASE_S = 15


def key_slots(tenant_id: str, key_id: str) -> str:
    return f"nz:{{{tenant_id}}}:cs:k:{key_id}"


def tenant_slots(tenant_id: str) -> str:
    return f"nz:{{{tenant_id}}}:cs:t"


async def release(redis: Store, tenant_id: str, key_id: str, request_id: str) -> None:
    """Free the request's slot on the key and the tenant; idempotent."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(key_slots(tenant_id, key_id), request_id)
        pipe.zrem(tenant_slots(tenant_id), request_id)
        await pipe.execute()
