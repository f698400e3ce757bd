"""What the client sees from the RLS: ``Retry-After`` and, on ``/v1/*``, OpenAI's headers.

Envoy itself writes ``X-RateLimit-Limit/Remaining/Reset`` (DRAFT_VERSION_03) from the statuses.
OpenAI's API sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and, on a 429,
``retry-after``/``retry-after-ms``; the official ``openai`` client reads them to back off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.errorbodies import error_body  # the one shape of error bodies per surface
from gateway.rls import Status

OPENAI = "openai"


def openai_duration(ms: int) -> str:
    """A duration as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _tightest(statuses: Sequence[Status], quota: str) -> Status | None:
    mine = [s for s in statuses if s.quota == quota and s.limit is not None]
    return min(mine, key=lambda s: (s.remaining, -s.reset_ms)) if mine else None


def headers(statuses: Sequence[Status], surface: str, rejected: bool) -> dict[str, str]:
    result: dict[str, str] = {}
    if rejected:
        retry_ms = max((s.retry_ms for s in statuses if s.over), default=1000)
        result["retry-after"] = str(max(1, math.ceil(retry_ms / 1000)))
        result["content-type"] = "application/json"
        if surface == OPENAI:
            result["retry-after-ms"] = str(retry_ms)
    if surface == OPENAI:
        for quota in ("requests", "tokens"):
            status = _tightest(statuses, quota)
            if status is None:
                continue
            assert status.limit is not None
            result[f"x-ratelimit-limit-{quota}"] = str(status.limit.requests_per_unit)
            result[f"x-ratelimit-remaining-{quota}"] = str(status.remaining)
            result[f"x-ratelimit-reset-{quota}"] = openai_duration(status.reset_ms)
    return result


def envoy_headers(statuses: Sequence[Status]) -> dict[str, str]:
    """What Envoy's ratelimit filter adds to a refusal from the same statuses
    (``enable_x_ratelimit_headers: DRAFT_VERSION_03`` and ``x-envoy-ratelimited``), for a
    refusal answered without it (authz's, :mod:`authz.throttle`)."""
    result = {"x-envoy-ratelimited": "true"}
    limited = [s for s in statuses if s.limit is not None]
    if not limited:
        return result
    # The first status with the fewest remaining, then every limit with its window.
    tightest = min(limited, key=lambda s: s.remaining)
    assert tightest.limit is not None
    policy = "".join(
        f", {s.limit.requests_per_unit};w={s.limit.unit.seconds}" for s in limited if s.limit
    )
    result["x-ratelimit-limit"] = f"{tightest.limit.requests_per_unit}{policy}"
    result["x-ratelimit-remaining"] = str(tightest.remaining)
    result["x-ratelimit-reset"] = str(tightest.reset_ms // 1000)
    return result


def body(surface: str) -> bytes:
    return error_body(429, OPENAI if surface == OPENAI else "ollama")
