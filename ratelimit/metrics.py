"""Prometheus metrics of the RLS: decisions by domain and outcome, labelled by tenant at most."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions by domain and outcome"
    " (ok, near_limit, over_limit, shadow_over_limit, error)",
    ["domain", "outcome", "tenant"],
)
DECISION_SECONDS = Histogram(
    "ratelimit_decision_seconds",
    "Time to decide one ShouldRateLimit call, Redis round trip included",
    ["domain"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
ANNOUNCEMENTS = Counter(
    "ratelimit_throttle_announcements_total",
    "Throttle announcements to authz (published, repeated: skipped as already announced, failed)",
    ["outcome"],
)
# From the start, at 0: ``increase(...{outcome="failed"}[5m]) > 0`` sees the first failure.
for _outcome in ("published", "repeated", "failed"):
    ANNOUNCEMENTS.labels(_outcome)
