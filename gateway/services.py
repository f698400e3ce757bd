"""The gateway's services: their names and entry modules."""

from __future__ import annotations

# Each service's entry module exposes ``async def run(settings)``. The local stack starts them
# in this order (and stops them in reverse): authz admits inference only while accounting
# answers.
SERVICE_MODULES = {
    "accounting": "accounting.main",
    "ratelimit": "ratelimit.main",
    "authz": "authz.main",
}
