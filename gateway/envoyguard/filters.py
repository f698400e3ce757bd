"""An HTTP connection manager's filter chain: ext_authz, the rate-limit filter and the
accounting ext_proc in order before the router (A), their failure modes (B), ext_authz's
body limit (E) and that authz's answer may remove the client's key (D)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2

from gateway import endpoints
from gateway.envoyguard.typed import filter_config, unpack
from gateway.envoyguard.violations import Violation
from gateway.envoyguard.yamlpath import join

# accounting's observing ext_proc filter (envoy/envoy.yaml, accounting/server.py): the one
# that sees every admitted request.
ACCOUNTING_FILTER = "nz.accounting"
_AUTHZ, _RATELIMIT, _ROUTER = "ext_authz", "ratelimit", "router"


def key_headers() -> tuple[str, ...]:
    """The headers that may carry a client's key (the endpoint table's list when it has one)."""
    found: tuple[str, ...] | None = getattr(endpoints, "KEY_HEADERS", None)
    return found if found is not None else ("authorization", "x-api-key")


@dataclass
class Chain:
    """What an HCM's filter chain holds: the names per-route configs refer to."""

    authz: list[str] = field(default_factory=list)
    ratelimit: list[str] = field(default_factory=list)
    ext_proc: list[str] = field(default_factory=list)  # every ext_proc filter
    ratelimit_configs: list[rate_limit_pb2.RateLimit] = field(default_factory=list)


def check_chain(
    file: str, path: str, filters: Sequence[hcm_pb2.HttpFilter], max_request_bytes: int
) -> tuple[Chain, list[Violation]]:
    """``path``: the HCM's typed_config; ``filters``: its http_filters."""
    chain = Chain()
    found: list[Violation] = []
    order: list[tuple[str, int]] = []  # (role, index) of the filters the order rule covers

    def add(where: str, invariant: str, message: str, fix: str) -> None:
        found.append(Violation(file, where, invariant, message, fix))

    for index, flt in enumerate(filters):
        where = join(path, "http_filters", index)
        config = filter_config(flt.typed_config)
        authz = unpack(config, ext_authz_pb2.ExtAuthz)
        ratelimit = unpack(config, rate_limit_pb2.RateLimit)
        ext_proc = unpack(config, ext_proc_pb2.ExternalProcessor)
        if authz is not None:
            chain.authz.append(flt.name)
            order.append((_AUTHZ, index))
            found += _check_authz(file, join(where, "typed_config"), authz, max_request_bytes)
        elif ratelimit is not None:
            chain.ratelimit.append(flt.name)
            chain.ratelimit_configs.append(ratelimit)
            order.append((_RATELIMIT, index))
            found += _check_ratelimit(file, join(where, "typed_config"), ratelimit)
        elif ext_proc is not None:
            chain.ext_proc.append(flt.name)
            if flt.name == ACCOUNTING_FILTER:
                order.append((ACCOUNTING_FILTER, index))
            if ext_proc.failure_mode_allow:
                add(
                    join(where, "typed_config"),
                    "B-failure-mode",
                    f"ext_proc {flt.name} has failure_mode_allow: true: while accounting is "
                    "down, requests pass unaccounted",
                    "set failure_mode_allow: false",
                )
        elif unpack(config, router_pb2.Router) is not None:
            order.append((_ROUTER, index))
        wrapped = unpack(flt.typed_config, extension_matcher_pb2.ExtensionWithMatcher) is not None
        if wrapped and (authz is not None or ratelimit is not None):
            add(
                join(where, "typed_config"),
                "A-filter-chain",
                f"{flt.name} is wrapped in a matcher (ExtensionWithMatcher) that can skip it: "
                "requests it skips pass unchecked",
                "configure the filter directly (only accounting's ext_proc filters are "
                "matcher-wrapped)",
            )
        protected = authz is not None or ratelimit is not None or flt.name == ACCOUNTING_FILTER
        if protected and flt.disabled:
            add(
                join(where, "disabled"),
                "A-filter-chain",
                f"{flt.name} is disabled by default (disabled: true): it runs only on routes "
                "that enable it",
                "remove disabled: true",
            )
    found += _check_order(file, join(path, "http_filters"), order, len(filters))
    return chain, found


def _check_order(file: str, path: str, order: list[tuple[str, int]], count: int) -> list[Violation]:
    found: list[Violation] = []
    wanted = (_AUTHZ, _RATELIMIT, ACCOUNTING_FILTER, _ROUTER)
    names = {
        _AUTHZ: "ext_authz",
        _RATELIMIT: "the rate-limit filter",
        ACCOUNTING_FILTER: f"the accounting ext_proc filter {ACCOUNTING_FILTER}",
        _ROUTER: "the router",
    }
    fix_order = f"http_filters must run ext_authz → ratelimit → {ACCOUNTING_FILTER} → router"
    first = {role: next((i for r, i in order if r == role), None) for role in wanted}
    for role in wanted:
        if first[role] is None:
            found.append(
                Violation(
                    file,
                    path,
                    "A-filter-chain",
                    f"this HTTP filter chain has no {names[role]}: requests pass it unchecked",
                    f"add it; {fix_order}",
                )
            )
    present = [(first[role], role) for role in wanted if first[role] is not None]
    if [role for _, role in sorted(present)] != [role for _, role in present]:
        actual = " → ".join(role for _, role in sorted(present))
        found.append(
            Violation(
                file,
                path,
                "A-filter-chain",
                f"filters out of order ({actual}): a filter after the router never runs, "
                "one before ext_authz sees unauthenticated requests",
                fix_order,
            )
        )
    router = first[_ROUTER]
    if router is not None and router != count - 1:
        found.append(
            Violation(
                file,
                join(path, router),
                "A-filter-chain",
                "the router is not the last HTTP filter: the filters after it never run",
                "move the router to the end of http_filters",
            )
        )
    return found


def _full(value: percent_pb2.FractionalPercent) -> bool:
    whole: int = {0: 100, 1: 10_000, 2: 1_000_000}.get(value.denominator, 100)
    return int(value.numerator) >= whole


def _check_authz(
    file: str, path: str, authz: ext_authz_pb2.ExtAuthz, max_request_bytes: int
) -> list[Violation]:
    found: list[Violation] = []

    def add(where: str, invariant: str, message: str, fix: str) -> None:
        found.append(Violation(file, join(path, where), invariant, message, fix))

    if authz.failure_mode_allow:
        add(
            "failure_mode_allow",
            "B-failure-mode",
            "ext_authz has failure_mode_allow: true: while authz is down, every request "
            "passes without a key check",
            "set failure_mode_allow: false",
        )
    if authz.HasField("filter_enabled") and not _full(authz.filter_enabled.default_value):
        add(
            "filter_enabled",
            "A-filter-chain",
            "ext_authz filter_enabled is below 100%: some requests skip authz",
            "remove filter_enabled",
        )
    if authz.HasField("filter_enabled_metadata"):
        add(
            "filter_enabled_metadata",
            "A-filter-chain",
            "ext_authz runs only for requests with matching metadata (filter_enabled_metadata)",
            "remove filter_enabled_metadata",
        )
    body = authz.with_request_body
    if not authz.HasField("with_request_body"):
        add(
            "with_request_body",
            "E-body-limit",
            "ext_authz sends no request body: authz cannot check the model or the budget",
            f"set with_request_body.max_request_bytes: {max_request_bytes}",
        )
    elif body.max_request_bytes != max_request_bytes:
        add(
            "with_request_body.max_request_bytes",
            "E-body-limit",
            f"ext_authz body limit {body.max_request_bytes} differs from authz's "
            f"NZ_MAX_REQUEST_BYTES {max_request_bytes}: bodies between the two are judged "
            "on a truncated copy or refused inconsistently",
            f"set max_request_bytes: {max_request_bytes} (or change NZ_MAX_REQUEST_BYTES too)",
        )
    if body.allow_partial_message:
        add(
            "with_request_body.allow_partial_message",
            "E-body-limit",
            "ext_authz allow_partial_message: true: authz judges a truncated body",
            "set allow_partial_message: false",
        )
    found += _check_key_removal(file, path, authz)
    return found


def _check_key_removal(file: str, path: str, authz: ext_authz_pb2.ExtAuthz) -> list[Violation]:
    """authz removes the key headers in its answer (headers_to_remove, authz/check.py); the
    config must let that answer through."""
    rules = authz.decoder_header_mutation_rules
    if not authz.HasField("decoder_header_mutation_rules"):
        return []
    blocked: list[str] = []
    if rules.disallow_all.value:
        blocked = list(key_headers())
    elif rules.HasField("disallow_expression"):
        try:
            expression = re.compile(rules.disallow_expression.regex)
        except re.error:
            blocked = list(key_headers())
        else:
            blocked = [h for h in key_headers() if expression.fullmatch(h)]
    if not blocked:
        return []
    return [
        Violation(
            file,
            join(path, "decoder_header_mutation_rules"),
            "D-credentials",
            f"ext_authz may no longer remove {', '.join(blocked)}: the client's key is no "
            "longer removed before the upstream (authz removes it in its answer)",
            "let authz's answer remove the key headers: drop disallow_all / narrow "
            "disallow_expression",
        )
    ]


def _check_ratelimit(file: str, path: str, config: rate_limit_pb2.RateLimit) -> list[Violation]:
    found: list[Violation] = []
    if not config.failure_mode_deny:
        found.append(
            Violation(
                file,
                join(path, "failure_mode_deny"),
                "B-failure-mode",
                "ratelimit has failure_mode_deny: false: while the RLS is down, no limit holds",
                "set failure_mode_deny: true",
            )
        )
    elif config.HasField("failure_mode_deny_percent") and not _full(
        config.failure_mode_deny_percent.default_value
    ):
        found.append(
            Violation(
                file,
                join(path, "failure_mode_deny_percent"),
                "B-failure-mode",
                "ratelimit failure_mode_deny_percent below 100%: while the RLS is down, some "
                "requests pass unlimited",
                "remove failure_mode_deny_percent",
            )
        )
    for name in ("filter_enabled", "filter_enforced"):
        if config.HasField(name) and not _full(getattr(config, name).default_value):
            found.append(
                Violation(
                    file,
                    join(path, name),
                    "A-filter-chain",
                    f"ratelimit {name} is below 100%: some requests are not limited",
                    f"remove {name}",
                )
            )
    if config.request_type == "internal":
        found.append(
            Violation(
                file,
                join(path, "request_type"),
                "A-filter-chain",
                "ratelimit request_type: internal: clients' (external) requests are not limited",
                "remove request_type (both)",
            )
        )
    return found
