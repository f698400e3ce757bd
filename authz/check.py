"""The ext_authz decision, in plain typed Python: key → endpoint → body → model → budget/slot.

Order matters and is part of the contract: a request without a valid key learns nothing but
401; a valid key learns 403 for any path or model it may not use (one identical body for a
blocked endpoint, an unknown model and a model outside its effective set); 400/413/415 for a
body it cannot use; 429 when a budget or its concurrency is exhausted; 503 whenever a check
cannot be made (Postgres or Redis down, deny mode) — never an allow. A key the RLS announced
it is refusing gets the RLS's 429 right after the endpoint check, its body unread
(:mod:`authz.throttle`).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from prometheus_client import Counter

from authz import fields, listings, models, payload, throttle
from authz.accounting_health import AccountingHealth
from authz.admission import Admission, Admitter, Outcome
from authz.decision import Allow, Decision, deny, json_reply
from authz.discovery import Discovery
from authz.keys import AddressThrottled, KeyStore
from authz.principal import Principal
from authz.request import AuthzRequest
from gateway import apikeys, endpoints, gojson, logs, rewrite
from gateway.endpoints import Endpoint, Kind, Listing, Scope
from gateway.requestmeta import RateOverride, Reason, RequestMeta
from gateway.storeerrors import StoreUnavailable

_UNAUTHORIZED_HEADERS = {"www-authenticate": 'Bearer realm="neuronetz"'}
_RATE_LIMITED = frozenset({Kind.INFERENCE, Kind.VERSION})  # the requests authz sends to the RLS
DECISIONS = Counter("authz_decisions_total", "ext_authz answers", ["tenant", "status"])
# The answers a request without a tenant (tenant="") can get exist from the start, at 0: the
# alerts' ``increase(...{status="503"}[5m]) > 0`` sees the first one (gateway/metrics.py).
for _status in ("400", "401", "403", "413", "429", "502", "503"):
    DECISIONS.labels("", _status)
# Why authz refused, across tenants (bounded: one series per Reason, all from the start).
REFUSALS = Counter("authz_refusals_total", "ext_authz refusals by reason", ["reason"])
for _reason in Reason:
    REFUSALS.labels(_reason.value)
_log = logs.get("authz.check")


class _Denied(Exception):
    def __init__(self, reply: Decision) -> None:
        super().__init__()
        self.reply = reply


def rate_overrides(principal: Principal) -> tuple[RateOverride, ...]:
    """``rl`` metadata for the RLS: the key's (inherited when NULL) and the tenant's limits."""
    found: list[RateOverride] = []
    for window in throttle.WINDOWS:
        value = throttle.own_limit(principal, window)
        if value is not None:
            found.append(RateOverride(window, value, "MINUTE"))
    return tuple(found)


def presented_key(req: AuthzRequest) -> str | None:
    """The bearer key; on an endpoint with its own key header (``x-api-key`` on Anthropic's
    ``/v1/messages``: :attr:`Endpoint.key_header`) that header instead. Both at once, or
    either twice, is no key at all."""
    bearer = req.header("authorization")
    endpoint = endpoints.for_path(req.path)
    if endpoint is not None and endpoint.key_header is not None:
        plain = req.header(endpoint.key_header)
        if plain:
            return None if bearer else apikeys.parse_plain(plain)
    return apikeys.parse_bearer(bearer)


class Authorizer:
    def __init__(
        self,
        keys: KeyStore,
        admitter: Admitter,
        discovery: Discovery,
        max_request_bytes: int,
        throttles: throttle.Throttles | None = None,
        inert_options: frozenset[str] = frozenset(),
        accounting: AccountingHealth | None = None,
    ) -> None:
        self._accounting = accounting  # None: not watched (the unit tests' Authorizer)
        self._inert_options = inert_options  # options every tenant may send (backend ignores)
        # What the RLS announced it refuses (none heard without a subscriber).
        self._throttles = throttle.Throttles() if throttles is None else throttles
        self._keys = keys
        self._admitter = admitter
        self._discovery = discovery
        self._max_body = max_request_bytes

    async def check(self, req: AuthzRequest) -> Decision:
        """Never raises: any failure to decide is a 503."""
        tenant = ""
        try:
            decision, tenant = await self._check(req)
        except StoreUnavailable as exc:
            _log.warning("check could not be made", error=type(exc).__name__, path=req.path)
            decision = deny(503, req.surface, reason=Reason.STORE_DOWN)
        except _Denied as denied:
            decision = denied.reply
        except Exception:
            _log.exception("check failed", path=req.path)
            decision = deny(503, req.surface, reason=Reason.ERROR)
        status = 200 if isinstance(decision, Allow) else decision.status
        DECISIONS.labels(tenant, str(status)).inc()
        if not isinstance(decision, Allow) and decision.reason is not None:
            REFUSALS.labels(decision.reason.value).inc()
            # One line per refusal (the request id is bound by the gRPC edge): the why.
            _log.info("refused", status=status, reason=str(decision.reason), tenant=tenant)
        return decision

    async def _refuse(
        self,
        status: int,
        reason: Reason,
        req: AuthzRequest,
        meta: RequestMeta | None = None,
        headers: dict[str, str] | None = None,
    ) -> Decision:
        """A 401/403/4xx that needed no Redis work so far still honours deny mode."""
        if await self._admitter.deny_mode():
            return deny(503, req.surface, reason=Reason.DENY_MODE)
        metadata = None if meta is None else meta.to_metadata()
        return deny(status, req.surface, headers, metadata, reason)

    async def _check(self, req: AuthzRequest) -> tuple[Decision, str]:
        presented = presented_key(req)
        try:
            principal = (
                None if presented is None else await self._keys.lookup(presented, req.client_ip)
            )
        except AddressThrottled as throttled:
            # Too many failed checks from this address: the key was not checked (no argon2, no
            # Postgres) and deny mode is not read either (a 429 is no allow).
            headers = {"retry-after": str(throttled.retry_after_s)}
            if req.surface == "openai":
                headers["retry-after-ms"] = str(throttled.retry_after_s * 1000)
            return deny(429, req.surface, headers, reason=Reason.ADDRESS_THROTTLED), ""
        if principal is None or not principal.usable(datetime.now(UTC)):
            unauthorized = _UNAUTHORIZED_HEADERS
            return await self._refuse(401, Reason.KEY_INVALID, req, headers=unauthorized), ""
        endpoint = endpoints.lookup(req.method, req.path)
        blocked = Reason.BLOCKED_ENDPOINT
        if endpoint is not None and endpoint.scope not in principal.scopes:
            endpoint, blocked = None, Reason.SCOPE
        identity = RequestMeta(
            tenant=principal.tenant,
            tenant_id=principal.tenant_id,
            key_id=principal.key_id,
            key_prefix=principal.prefix,
            surface=req.surface,
            endpoint="" if endpoint is None else endpoint.path,
        )
        if endpoint is None:
            return await self._refuse(403, blocked, req, identity), principal.tenant
        if endpoint.kind in _RATE_LIMITED:
            # The RLS is refusing this key or its tenant: its 429 now, no body read (and, like
            # any 429, no deny-mode read: a refusal serves nothing).
            refused = self._throttles.refusal(principal, req.surface, identity.to_metadata())
            if refused is not None:
                return replace(refused, reason=Reason.RATE), principal.tenant
        if len(req.body) > self._max_body:
            return await self._refuse(413, Reason.TOO_LARGE, req, identity), principal.tenant
        if endpoint.kind is Kind.INFERENCE:
            return await self._inference(req, endpoint, principal, identity), principal.tenant
        return await self._answer(req, endpoint, principal, identity), principal.tenant

    async def _inference(
        self, req: AuthzRequest, endpoint: Endpoint, principal: Principal, meta: RequestMeta
    ) -> Decision:
        try:
            body = payload.parse(req, embeddings=endpoint.scope is Scope.EMBEDDINGS)
        except payload.BadRequest as bad:
            return await self._refuse(bad.status, Reason.BODY_INVALID, req, meta)
        allowed = principal.allowed_options | self._inert_options
        if not fields.options_allowed(body.options, allowed, principal.max_num_ctx):
            return await self._refuse(400, Reason.OPTION_NOT_ALLOWED, req, meta)
        model = models.permits(principal, self._discovery.models(), body.model)
        if model is None:
            return await self._refuse(403, Reason.MODEL_NOT_ALLOWED, req, meta)
        if self._accounting is not None and not self._accounting.up:
            # Nothing would account for it: 503 before any slot or reservation is taken.
            metadata = meta.to_metadata()
            return deny(503, req.surface, metadata=metadata, reason=Reason.ACCOUNTING_DOWN)
        embeddings = endpoint.scope is Scope.EMBEDDINGS
        # What it asks (or the tenant's default), never above the tenant's or gateway's ceiling.
        asked = body.output_cap or principal.default_max_tokens
        cap = 0 if embeddings else min(asked, principal.max_output_tokens, fields.OUTPUT_CEILING)
        request_id = req.request_id or str(uuid.uuid4())
        admission = await self._admitter.admit(
            principal,
            request_id,
            body.prompt_estimate + cap,
            take=True,
            need=body.prompt_estimate + (0 if embeddings else 1),
        )
        self._raise_unless_admitted(admission, req, meta)
        if admission.period is not None and not embeddings:
            # Run under what the budget has left: the reservation is the upper bound.
            cap = min(cap, max(1, admission.reserved - body.prompt_estimate))
        limits = rewrite.Limits(
            endpoint.path, body.stream, cap, principal.keep_alive_min_s, principal.keep_alive_max_s
        )
        # Only a request whose body changes (or whose prompt is logged) takes Envoy's mutating
        # ext_proc round trip (nz.rewrite in envoy.yaml), and only a stream that gets a usage
        # chunk its client did not ask for has it taken out (nz.strip).
        changes = rewrite.apply(body.body, limits)
        admitted = replace(
            meta,
            request_id=request_id,
            model=model,
            stream=body.stream,
            rl=rate_overrides(principal),
            reserved=admission.reserved,
            prompt_estimate=body.prompt_estimate,  # a cut stream is charged at least this
            max_tokens=cap,
            keep_alive_min_s=principal.keep_alive_min_s,
            keep_alive_max_s=principal.keep_alive_max_s,
            slot=admission.slot,
            prompt_log=principal.prompt_log,
            rewrite=changes.changed or principal.prompt_log,
            strip_usage=changes.strip_usage,
        )
        return self._allow(principal, admission, admitted)

    def _raise_unless_admitted(
        self, admission: Admission, req: AuthzRequest, meta: RequestMeta
    ) -> None:
        if admission.outcome is Outcome.OK:
            return
        metadata = meta.to_metadata()
        if admission.outcome is Outcome.DENY_MODE:
            raise _Denied(deny(503, req.surface, metadata=metadata, reason=Reason.DENY_MODE))
        headers = admission.budget_headers()
        if admission.retry_after is not None:
            headers["retry-after"] = str(admission.retry_after)
        why = Reason.CONCURRENCY if admission.outcome is Outcome.SLOTS else Reason.BUDGET
        raise _Denied(deny(429, req.surface, headers, metadata, why))

    def _allow(self, principal: Principal, admission: Admission, meta: RequestMeta) -> Allow:
        # Identity for the upstream, overwriting whatever the client sent under these names.
        upstream = {"x-nz-tenant": principal.tenant, "x-nz-key-prefix": principal.prefix}
        # Envoy applies removals after the headers it sets: the identity headers are
        # overwritten (never removed), whatever the client sent. The model header routes to
        # the backends hosting the model; a request without one must not pick a backend.
        removed = endpoints.KEY_HEADERS
        if meta.model:
            upstream[endpoints.MODEL_HEADER] = meta.model
        else:
            removed = (*removed, endpoints.MODEL_HEADER)
        return Allow(
            upstream_headers=upstream,
            remove_headers=removed,
            response_headers=admission.budget_headers(),
            metadata=meta.to_metadata(),
        )

    async def _answer(
        self, req: AuthzRequest, endpoint: Endpoint, principal: Principal, meta: RequestMeta
    ) -> Decision:
        """Listings, model detail and version: no reservation, no slot; budget headers."""
        show_model = ""
        if endpoint.kind is Kind.SHOW:
            try:
                body = payload.json_object(req)
            except payload.BadRequest as bad:
                return await self._refuse(bad.status, Reason.BODY_INVALID, req, meta)
            name = gojson.field(body, "model") or gojson.field(body, "name")
            if not isinstance(name, str) or not name.strip():
                return await self._refuse(400, Reason.BODY_INVALID, req, meta)
            show_model = name
        discovered = self._discovery.models()
        if endpoint.listing is Listing.MODEL:
            show_model = endpoints.model_in_path(req.path)
        model = ""
        if show_model:
            model = models.permits(principal, discovered, show_model) or ""
            if not model:
                return await self._refuse(403, Reason.MODEL_NOT_ALLOWED, req, meta)
            meta = replace(meta, model=model)
        admission = await self._admitter.admit(principal, req.request_id, 0, take=False)
        self._raise_unless_admitted(admission, req, meta)
        if endpoint.kind is Kind.VERSION:
            # Proxied: counts against requests/min.
            return self._allow(principal, admission, replace(meta, rl=rate_overrides(principal)))
        if endpoint.kind is Kind.SHOW:
            # Proxied to a backend hosting the model, with failover; accounting's nz.show strips
            # what /api/show must never reveal (envoy.yaml, accounting/showfields.py).
            return self._allow(principal, admission, meta)
        headers = admission.budget_headers()
        reply_meta = meta.to_metadata()
        effective = models.effective(principal, discovered)
        entries = self._discovery.entries()
        if endpoint.listing is Listing.TAGS:
            return json_reply(listings.tags(entries, effective), headers, reply_meta)
        if endpoint.listing is Listing.MODELS:
            return json_reply(listings.openai_models(entries, effective), headers, reply_meta)
        if endpoint.listing is Listing.MODEL and model in entries:
            return json_reply(
                listings.openai_model(show_model, entries[model]), headers, reply_meta
            )
        if endpoint.listing is Listing.PS:
            running = self._discovery.running()
            if running is None:  # no backend's /api/ps has been read lately
                return deny(502, req.surface, metadata=reply_meta, reason=Reason.NO_BACKEND)
            return json_reply(listings.ps(running, effective), headers, reply_meta)
        return deny(403, req.surface, metadata=reply_meta, reason=Reason.BLOCKED_ENDPOINT)
