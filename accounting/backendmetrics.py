"""Per-backend Prometheus metrics, from Envoy's access log: which Ollama backend answered, how,
how fast, and after how many failed attempts elsewhere (issue 13).

Labelled by the backend's name only: names come from the operator's backend list (Envoy tags
the entry with the routed host's ``nz.backend`` metadata), so the series are bounded. An entry
that names no backend (a refusal, a local reply) is not counted here; the audit row has it.
Counters and a histogram need no ``multiprocess_mode``: with ``NZ_WORKERS`` > 1 each worker's
series are summed (gateway/workers.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RESPONSES = Counter(
    "accounting_backend_responses_total",
    "requests a backend answered, by HTTP status class (2xx, 4xx, 5xx; none: no status)",
    ["backend", "code"],
)
FIRST_BYTE = Histogram(
    "accounting_backend_first_byte_seconds",
    "time from the request's first byte to the backend's first response byte",
    ["backend"],
    # Inference: a warm model answers in tens of milliseconds, a cold one loads for seconds.
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
FAILOVERS = Counter(
    "accounting_backend_failovers_total",
    "requests this backend answered after an attempt elsewhere failed (Envoy retried)",
    ["backend"],
)


def status_class(status: int) -> str:
    """``2xx`` for 200-299 and so on; ``none`` for a status outside 100-599 (Envoy logs 0 when
    no response was sent), so the label stays bounded."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def observe(backend: str, status: int, attempts: int, first_byte_s: float | None) -> None:
    """Count one logged request for ``backend`` (nothing when it is ""): its answered status,
    its time to first byte when the backend sent one, a failover when ``attempts`` > 1."""
    if not backend:
        return
    RESPONSES.labels(backend, status_class(status)).inc()
    if first_byte_s is not None:
        FIRST_BYTE.labels(backend).observe(first_byte_s)
    if attempts > 1:
        FAILOVERS.labels(backend).inc()
