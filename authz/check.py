"""The ext_authz decision, in plain typed Python: key → endpoint → (model, budget, …).

Order matters and is part of the contract: a request without a valid key learns nothing but
401; a valid key learns 403 for any path or model it may not use, one identical body.
"""

from __future__ import annotations

from datetime import UTC, datetime

from authz import endpoints
from authz.decision import Allow, Decision, deny
from authz.keys import KeyStore, StoreUnavailable
from authz.request import AuthzRequest
from gateway import apikeys

# Headers the client may not set: authz alone sets them for the upstream.
IDENTITY_HEADERS = ("x-nz-tenant", "x-nz-key-prefix")
_UNAUTHORIZED_HEADERS = {"www-authenticate": 'Bearer realm="neuronetz"'}


class Authorizer:
    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def check(self, req: AuthzRequest) -> Decision:
        presented = apikeys.parse_bearer(req.header("authorization"))
        if presented is None:
            return deny(401, req.surface, _UNAUTHORIZED_HEADERS)
        try:
            principal = await self._keys.lookup(presented)
        except StoreUnavailable:
            return deny(503, req.surface)
        if principal is None or not principal.usable(datetime.now(UTC)):
            return deny(401, req.surface, _UNAUTHORIZED_HEADERS)
        identity = {
            "tenant": principal.tenant,
            "tenant_id": principal.tenant_id,
            "key_id": principal.key_id,
            "key_prefix": principal.prefix,
        }

        endpoint = endpoints.lookup(req.method, req.path)
        if endpoint is None or endpoint.scope not in principal.scopes:
            return deny(403, req.surface, metadata=identity)

        return Allow(
            upstream_headers={
                "x-nz-tenant": principal.tenant,
                "x-nz-key-prefix": principal.prefix,
            },
            # Identity headers overwrite whatever the client sent (Envoy applies removals
            # after additions, so they must not be listed here).
            remove_headers=("authorization",),
            metadata=identity,
        )
