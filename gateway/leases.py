"""Leases of a request in flight: its concurrency slot and its budget reservation.

authz takes both with an expiry (``authz/admission.py``): a slot (``gateway/slots.py``) and a
reservation (``gateway/budgets.py``) that nobody releases — a crashed accounting, a lost
stream — free themselves. A stream that lives longer than a lease must not lose it: while the
stream is open, accounting calls :func:`renew_all` for every live request (every
:attr:`Leases.renew_every_s`): one Lua call per request, pipelined, that pushes the expiry of
whatever the request still holds, and nothing else: a slot or reservation already released,
settled or swept stays gone. Leases are short (15 s by default): a request whose
accounting died frees what it held within one lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway import budgets, scriptmetrics, slots
from gateway.storage import Store, queue_script


@dataclass(frozen=True, slots=True)
class Leases:
    """Lease lengths (settings ``NZ_SLOT_LEASE_S``, ``NZ_RESERVATION_LEASE_S``)."""

    slot_s: int = slots.LEASE_S
    reservation_s: int = budgets.RESERVATION_TTL_S

    @property
    def renew_every_s(self) -> float:
        """How often a live stream renews: a third of the shorter lease, so two renewals may
        be missed before anything expires."""
        return min(self.slot_s, self.reservation_s) / 3

    @property
    def record_ttl_s(self) -> int:
        """How long a reservation's record outlives the reservation: settlement reads it to
        know which *used* counters to debit, whatever the reservation's state."""
        return self.reservation_s + budgets.RECORD_GRACE_S


_RENEW = budgets.lua("renew.lua")  # KEYS, ARGV and what it returns: its header
_RENEW_SECONDS = scriptmetrics.Timer("renew")  # one pipeline of up to ``batch`` calls


async def renew_all(
    redis: Store,
    leases: Leases,
    requests: list[tuple[str, str, str]],
    batch: int = 500,
) -> None:
    """Push the expiry of every request's slot and reservation ``leases`` into the future;
    ``requests``: (tenant_id, key_id, request_id). One pipeline per ``batch`` requests."""
    script = redis.register_script(_RENEW)
    for start in range(0, len(requests), batch):
        now = time.time()
        args = [
            now + leases.slot_s,
            leases.slot_s + 1,
            now + leases.reservation_s,
            leases.reservation_s + 1,
            leases.record_ttl_s,
        ]
        async with redis.pipeline(transaction=False) as pipe:
            for tenant_id, key_id, request_id in requests[start : start + batch]:
                keys = [
                    slots.key_slots(tenant_id, key_id),
                    slots.tenant_slots(tenant_id),
                    budgets.reservation_key(tenant_id, request_id),
                ]
                await queue_script(pipe, script, keys, [request_id, *args])
            await _RENEW_SECONDS.run(pipe.execute())
