"""What authz decided about a request, as it hands it on: the ext_authz dynamic metadata.

authz builds one :class:`RequestMeta` per answer and writes :meth:`RequestMeta.to_metadata`
(namespace :data:`NAMESPACE`); Envoy reads some keys (``envoy/envoy.yaml``: ``tenant_id``,
``key_id``, ``rl.*``, ``request_id``, ``rewrite``, ``strip_usage``, ``surface``, ``tenant``,
``model``), the audit row others, and accounting reads it back with
:meth:`RequestMeta.from_metadata`. The field names are the metadata keys.

Which keys are written:

- the identity (``tenant``, ``tenant_id``, ``key_id``, ``key_prefix``, ``surface``) and
  ``endpoint``, ``model``, ``request_id`` when not empty;
- ``rl`` when a rate limit applies (an absent entry: no limit of that kind);
- ``request_id`` marks an admitted inference request (Envoy runs accounting's ext_proc on it
  alone): the admission's fields (``stream`` … ``prompt_log``) are written with it, and only
  with it — ``keep_alive_*`` as null when the tenant sets none;
- ``rewrite`` and ``strip_usage`` only when true: Envoy tests their presence.

Not part of :class:`RequestMeta`: ``status`` and ``reason`` (:class:`Reason`), which authz adds
to every reply it gives itself (authz/server.py) — why it refused, for the audit row and
Envoy's access log, never for the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any

NAMESPACE = "envoy.filters.http.ext_authz"
# The RLS's namespace: ``refused: true`` on its 429 (ratelimit/server.py).
RATELIMIT_NAMESPACE = "envoy.filters.http.ratelimit"


class Reason(StrEnum):
    """Why a request was refused: one bounded word per cause, in the ``reason`` metadata key,
    the audit row's ``reason`` column and Envoy's access log. The client's body and status
    stay the same for causes they must not tell apart (blocked endpoint / model not allowed)."""

    KEY_INVALID = "key_invalid"  # 401: no key, an unknown, revoked, expired or disabled one
    ADDRESS_THROTTLED = "address_throttled"  # 429: too many failed key checks from the address
    BLOCKED_ENDPOINT = "blocked_endpoint"  # 403: not an allowlisted method and path
    SCOPE = "scope"  # 403: an endpoint the key's scopes do not include
    TOO_LARGE = "too_large"  # 413
    BODY_INVALID = "body_invalid"  # 400/415: a body the endpoint cannot use
    OPTION_NOT_ALLOWED = "option_not_allowed"  # 400: an option the tenant may not send
    MODEL_NOT_ALLOWED = "model_not_allowed"  # 403: unknown, or outside the key's models
    BUDGET = "budget"  # 429: a budget period is exhausted
    CONCURRENCY = "concurrency"  # 429: the key's or tenant's concurrent requests
    RATE = "rate"  # 429: a rate limit (the RLS's, or authz refusing what the RLS announced)
    DENY_MODE = "deny_mode"  # 503: accounting cannot keep its record
    ACCOUNTING_DOWN = "accounting_down"  # 503: accounting does not answer
    STORE_DOWN = "store_down"  # 503: Redis or PostgreSQL could not be asked
    NO_BACKEND = "no_backend"  # 502: no backend's running models known (/api/ps)
    ERROR = "error"  # 503: authz failed to decide (a bug: its log says more)

    @classmethod
    def read(cls, value: Any) -> Reason | None:
        """A metadata value as a reason; None for anything else (never an unbounded text)."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class RateOverride:
    """One rate limit authz hands the RLS (an entry of ``rl``), shaped as Envoy's
    ``RateLimit.Override.DynamicMetadata`` reads it."""

    name: str  # the window: "key_rpm" | "tenant_rpm" | "key_tpm" | "tenant_tpm"
    requests_per_unit: int
    unit: str  # the RLS's unit name, e.g. "MINUTE"


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """authz's metadata for one request; a missing or mistyped value reads as its default."""

    request_id: str = ""  # Envoy's x-request-id; set on an admitted inference request only
    tenant: str = ""
    tenant_id: str = ""
    key_id: str = ""
    key_prefix: str = ""
    model: str = ""  # canonical model name (inference, model detail, show)
    endpoint: str = ""  # the allowlisted path (gateway/endpoints.py)
    stream: bool = False
    reserved: int = 0  # budget tokens reserved (0: no budget)
    max_tokens: int = 0  # the output cap the request runs under
    keep_alive_min_s: int | None = None
    keep_alive_max_s: int | None = None
    slot: bool = False  # a concurrency slot was taken
    prompt_log: bool = False
    strip_usage: bool = False  # the rewrite asks for a usage chunk the client did not
    prompt_estimate: int = 0  # authz's estimate of the prompt's tokens (its reservation's part)
    rl: tuple[RateOverride, ...] = ()
    surface: str = ""  # "ollama" | "openai"
    rewrite: bool = False  # the body changes (or the prompt is logged): nz.rewrite's round trip

    def __post_init__(self) -> None:
        # One value for one set of limits, whatever order they came in (a Struct keeps none).
        rl = self.rl
        if len(rl) > 1 and any(a.name > b.name for a, b in pairwise(rl)):
            object.__setattr__(self, "rl", tuple(sorted(rl, key=_name)))

    def to_metadata(self) -> dict[str, Any]:
        """The dynamic metadata (a protobuf Struct's contents)."""
        meta: dict[str, Any] = {}
        for name in ("tenant", "tenant_id", "key_id", "key_prefix", "surface", "endpoint"):
            if getattr(self, name):
                meta[name] = getattr(self, name)
        if self.model:
            meta["model"] = self.model
        if self.rl:
            meta["rl"] = {
                o.name: {"requests_per_unit": o.requests_per_unit, "unit": o.unit} for o in self.rl
            }
        if self.request_id:
            meta.update(
                request_id=self.request_id,
                stream=self.stream,
                reserved=self.reserved,
                prompt_estimate=self.prompt_estimate,
                max_tokens=self.max_tokens,
                keep_alive_min_s=self.keep_alive_min_s,
                keep_alive_max_s=self.keep_alive_max_s,
                slot=self.slot,
                prompt_log=self.prompt_log,
            )
        if self.rewrite:
            meta["rewrite"] = True
        if self.strip_usage:
            meta["strip_usage"] = True
        return meta

    @classmethod
    def from_metadata(cls, request_id: str, meta: Mapping[str, Any]) -> RequestMeta:
        """Read back what :meth:`to_metadata` wrote (numbers arrive as floats from a Struct);
        ``request_id`` is the request's id as the reader knows it."""
        return cls(
            request_id=request_id,
            tenant=_text(meta.get("tenant")),
            tenant_id=_text(meta.get("tenant_id")),
            key_id=_text(meta.get("key_id")),
            key_prefix=_text(meta.get("key_prefix")),
            model=_text(meta.get("model")),
            endpoint=_text(meta.get("endpoint")),
            stream=meta.get("stream") is True,
            reserved=_number(meta.get("reserved")) or 0,
            max_tokens=_number(meta.get("max_tokens")) or 0,
            keep_alive_min_s=_number(meta.get("keep_alive_min_s")),
            keep_alive_max_s=_number(meta.get("keep_alive_max_s")),
            slot=meta.get("slot") is True,
            prompt_log=meta.get("prompt_log") is True,
            strip_usage=meta.get("strip_usage") is True,
            prompt_estimate=_prompt_estimate(meta),
            rl=_rate_overrides(meta.get("rl")),
            surface=_text(meta.get("surface")),
            rewrite=meta.get("rewrite") is True,
        )


def _name(override: RateOverride) -> str:
    return override.name


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _rate_overrides(rl: Any) -> tuple[RateOverride, ...]:
    """The well-formed entries of ``rl`` (a count ≥ 0 and a unit name)."""
    if not isinstance(rl, dict):  # a Struct's, as read from Envoy or JSON
        return ()
    found: list[RateOverride] = []
    for name, value in rl.items():
        if not isinstance(name, str) or not isinstance(value, dict):
            continue
        per_unit = _number(value.get("requests_per_unit"))
        unit = value.get("unit")
        if per_unit is not None and per_unit >= 0 and isinstance(unit, str) and unit:
            found.append(RateOverride(name, per_unit, unit))
    return tuple(found)


def _prompt_estimate(meta: Mapping[str, Any]) -> int:
    """authz's estimate of the prompt's tokens (what it reserved for the prompt); without it,
    what the reservation holds beyond the output cap; 0 when neither is known."""
    estimate = _number(meta.get("prompt_estimate"))
    if estimate is not None:
        return max(0, estimate)
    reserved = _number(meta.get("reserved")) or 0
    max_tokens = _number(meta.get("max_tokens")) or 0
    return max(0, reserved - max_tokens) if reserved > 0 else 0
