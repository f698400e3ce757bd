"""Names the services signal each other by, outside gRPC.

* :data:`DENY_MODE_KEY` — the Redis flag accounting sets while it cannot audit (its buffer is
  full); authz refuses every request with 503 while it exists (accounting/denymode.py,
  authz/admission.py).
* :data:`KEY_REVOKED_CHANNEL`, :data:`KEY_CHANGED_CHANNEL` — PostgreSQL NOTIFY channels (payload:
  the key's prefix) every authz replica LISTENs on to drop a cached key within a second
  (authz/revocations.py); the revocations trigger (migrations/0001_schema.sql) and the admin
  API's stores (authz/admin/tenantstore.py, authz/admin/keystore.py) notify them.

The RLS's throttle announcements have their own contract: gateway/throttlemap.py.
"""

from __future__ import annotations

DENY_MODE_KEY = "nz:deny_mode"
KEY_REVOKED_CHANNEL = "key_revoked"  # the migration's trigger spells it too
KEY_CHANGED_CHANNEL = "key_changed"
