"""The gateway's services: their names and entry modules."""

from __future__ import annotations

# Each service's entry module exposes ``async def run(settings)``. The local stack starts them
# in this order (and stops them in reverse, like Kubernetes' native sidecars): authz admits
# inference only while accounting answers, and accounting's last tokens/min debits go to
# ratelimit, which therefore stops after it.
SERVICE_MODULES = {
    "ratelimit": "ratelimit.main",
    "accounting": "accounting.main",
    "authz": "authz.main",
}
