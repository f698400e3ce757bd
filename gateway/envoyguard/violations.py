"""What the guard reports: one violation of one invariant at one place of one file, and the
invariants themselves (id, what each protects, how to fix a break) — docs/PLATFORM.md's table."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Invariant:
    id: str
    what: str  # the rule
    why: str  # what an edit that breaks it opens


INVARIANTS: dict[str, Invariant] = {
    i.id: i
    for i in (
        Invariant(
            "A-filter-chain",
            "every HTTP filter chain runs ext_authz, then the rate-limit filter, then "
            "nz.accounting (ext_proc), then the router; none disabled by default",
            "requests reach the model server unauthenticated, unlimited or uncounted",
        ),
        Invariant(
            "A-per-route",
            "no route that forwards to an upstream disables ext_authz or the rate-limit filter "
            "(typed_per_filter_config), nor the accounting ext_proc filters on an inference route",
            "one route bypasses keys, limits or budgets",
        ),
        Invariant(
            "B-failure-mode",
            "ext_authz failure_mode_allow false, ratelimit failure_mode_deny true, every "
            "ext_proc failure_mode_allow false",
            "an outage of authz, the RLS or accounting lets every request through",
        ),
        Invariant(
            "C-route-path",
            "every forwarding route matches only paths of the endpoint table "
            "(gateway/endpoints.py)",
            "model management (/api/pull, /api/delete, /api/blobs/…) or unknown paths reach "
            "the model server",
        ),
        Invariant(
            "D-path-normalization",
            "normalize_path true, merge_slashes true, path_with_escaped_slashes_action "
            "REJECT_REQUEST or UNESCAPE_AND_REDIRECT",
            "/api//pull or /api/%2fpull spellings slip past the route table and authz",
        ),
        Invariant(
            "D-header-underscores",
            "headers_with_underscores_action REJECT_REQUEST or DROP_HEADER",
            "x_api_key-style headers a backend may read as x-api-key",
        ),
        Invariant(
            "D-credentials",
            "the client's key headers (Authorization, x-api-key) are removed before the "
            "upstream: authz's ext_authz answer removes them, nothing forbids or re-adds them",
            "the tenant's API key reaches the model server",
        ),
        Invariant(
            "E-body-limit",
            "ext_authz with_request_body.max_request_bytes equals authz's NZ_MAX_REQUEST_BYTES, "
            "allow_partial_message false",
            "authz judges a truncated body, or refuses bodies Envoy admitted",
        ),
        Invariant(
            "F-streaming-timeouts",
            "streaming routes: timeout 0s, idle timeout ≥ 300 s (or off), max_stream_duration "
            "≥ 840 s (or off); the HCM's stream_idle_timeout ≥ 300 s (or off)",
            "long generations or a model loading are cut mid-stream",
        ),
        Invariant(
            "G-admin-loopback",
            "Envoy's admin interface listens on loopback (or a Unix socket) only",
            "anyone on the network can stop Envoy or dump its config",
        ),
        Invariant(
            "X-cannot-check",
            "every typed_config is a type the guard knows; routes are inline (no RDS)",
            "the guard cannot see what the config does",
        ),
        Invariant(
            "V-envoy-validate",
            "envoy --mode validate accepts the file",
            "Envoy will not start with it",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Violation:
    file: str
    path: str  # YAML path, e.g. static_resources.listeners[0].filter_chains[0]
    invariant: str  # an INVARIANTS id
    message: str  # what the edit breaks
    fix: str  # how to fix it

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        return f"{self.file}: {self.path}: [{self.invariant}] {self.message}; fix: {self.fix}"
