"""Audit rows: one per request, allowed or denied, from Envoy's access log.

Envoy delivers each finished request's entry (with ext_authz's dynamic metadata) to the
access-log service; the edge turns it into an :class:`AccessEntry`, this module turns that
into a row. Token counts come from the outcome of the request's observed stream, handed over
in this process (the row waits up to ``OUTCOME_WAIT_S`` for it).

A row stores nothing unbounded a client chose. The endpoint is the allowlisted path
(gateway/endpoints.py); any other path is stored only for a request with a tenant, clipped to
``MAX_PATH_CHARS`` — a clipped value ends in ``…`` — and a request without a tenant stores
``other`` (those are audited in aggregate: accounting/denials.py). Model, backend name, error
text and client address are clipped too (``MAX_TEXT_CHARS``). Why a request was refused is
one word of :class:`gateway.requestmeta.Reason` (authz's ``reason``, ``rate`` for the RLS's
429), never a text a client chose.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from accounting import backendmetrics, pgwrite
from accounting.recent import Recent
from accounting.stream import Outcome
from gateway import endpoints, logs
from gateway.requestmeta import NAMESPACE as AUTHZ_NAMESPACE
from gateway.requestmeta import RATELIMIT_NAMESPACE, Reason

# A stream Envoy logged as ended short is read this much longer before it is accounted as
# cut (accounting/server.py); its audit row waits for that outcome a second more.
CUT_GRACE_S = 1.0
OUTCOME_WAIT_S = CUT_GRACE_S + 1.0
MAX_PATH_CHARS = 64
MAX_TEXT_CHARS = 256
MAX_ATTEMPTS = 32767  # the audit column is a smallint
CLIPPED = "\u2026"  # "…": the value was longer
OTHER_ENDPOINT = "other"
# Envoy's flag for a request ext_authz answered itself (a denial, or authz's own reply).
_AUTHZ_REPLIED = "UAEX"
# Envoy's own local replies to a request saying `content-type: application/grpc` carry their
# status as a gRPC code (Envoy's Grpc::Utility::httpToGrpcStatus): back to HTTP. UNAVAILABLE
# stands for 429 and 502-504 (429 when the RLS refused); any other code for a status gRPC
# cannot name (500).
_FROM_GRPC = {"0": 200, "13": 400, "16": 401, "7": 403, "12": 404, "14": 503}
_RATE_LIMITED = "RL"


_log = logs.get("accounting")


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """What Envoy's access log says about one request (typed at the gRPC edge)."""

    request_id: str
    start: datetime
    method: str
    path: str
    status: int
    duration_ms: float | None
    bytes_in: int
    bytes_out: int
    client_ip: str
    response_flags: str
    metadata: dict[str, dict[str, Any]]
    details: str = ""  # Envoy's response code details ("via_upstream": the backend answered)
    grpc_status: str = ""  # the response's grpc-status header, if any
    backend: str = ""  # the backend Envoy routed to ("" none: a refusal, a local reply)
    attempts: int = 0  # upstream attempts: 0 none, 1 the first try, 2+ failed over
    first_byte_s: float | None = None  # until the backend's first byte (None: it sent none)


@dataclass(slots=True)
class AuditRow:
    request_id: str
    ts: datetime
    tenant_id: str | None
    key_prefix: str | None
    method: str
    endpoint: str
    model: str
    status: int
    tokens_in: int | None
    tokens_out: int | None
    tokens_estimated: bool
    latency_ms: float | None
    bytes_in: int
    bytes_out: int
    client_ip: str
    response_flags: str
    error: str | None
    count: int = 1  # requests this row stands for (> 1: an aggregate, accounting/denials.py)
    # Defaulted, so rows spooled before these columns existed still load (accounting/spool.py).
    backend: str = ""  # the backend that answered ("" none did)
    attempts: int = 0  # upstream attempts (2+: Envoy failed over to ``backend``)
    reason: str = ""  # why it was refused (a Reason's value; "" not refused, or not known)
    awaiting_outcome: bool = False
    received: float = field(default_factory=time.monotonic)


def _str(meta: dict[str, Any], name: str) -> str | None:
    value = meta.get(name)
    return value if isinstance(value, str) and value else None


def uuid_or_none(value: str | None) -> str | None:
    """A well-formed UUID, else None (a malformed one must not poison a whole batch)."""
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _int(meta: dict[str, Any], name: str) -> int | None:
    value = meta.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` if it is at most ``limit`` characters, else its start ending in ``…`` (NUL
    characters, which Postgres refuses, removed)."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + CLIPPED


def _clip_or_none(text: str | None) -> str | None:
    return None if text is None else clip(text)


def endpoint_of(method: str, path: str, authenticated: bool) -> str:
    """What a row stores of the request's path: the allowlisted endpoint; otherwise the path
    clipped to ``MAX_PATH_CHARS`` for a request with a tenant, ``other`` without one."""
    bare = path.split("?", 1)[0]
    found = endpoints.lookup(method, bare)
    if found is not None:
        return found.path
    return clip(bare, MAX_PATH_CHARS) if authenticated else OTHER_ENDPOINT


def answered_status(entry: AccessEntry, authz: dict[str, Any]) -> int:
    """The status the request was answered with. A client that sends ``content-type:
    application/grpc`` gets every local reply as gRPC — HTTP 200, the status in
    ``grpc-status`` — and Envoy logs 200. For a reply authz gave itself, authz's own status
    (``status`` in its metadata); for Envoy's own, the one its gRPC code stands for."""
    flags = entry.response_flags.split(",")
    if _AUTHZ_REPLIED in flags:
        status = _int(authz, "status")
        if status is not None and 100 <= status <= 599:
            return status
    if entry.status == 200 and entry.grpc_status and entry.details != "via_upstream":
        if entry.grpc_status == "14" and _RATE_LIMITED in flags:
            return 429
        return _FROM_GRPC.get(entry.grpc_status, 500)
    return entry.status


def refusal_reason(entry: AccessEntry, status: int) -> str:
    """Why the request was refused: authz's ``reason``; ``rate`` for the RLS's 429 (its
    ``refused`` metadata, or Envoy's RL flag); ``key_invalid`` for the 401 Envoy's own routes
    answer for authz (a key that is not even well-formed); "" otherwise."""
    authz = entry.metadata.get(AUTHZ_NAMESPACE, {})
    flags = entry.response_flags.split(",")
    if _AUTHZ_REPLIED in flags:
        found = Reason.read(authz.get("reason"))
        return "" if found is None else str(found)
    rls = entry.metadata.get(RATELIMIT_NAMESPACE, {})
    if rls.get("refused") is True or _RATE_LIMITED in flags:
        return str(Reason.RATE)
    if status == 401 and entry.details != "via_upstream":
        return str(Reason.KEY_INVALID)
    return ""


def row_from_entry(entry: AccessEntry) -> AuditRow:
    authz = entry.metadata.get(AUTHZ_NAMESPACE, {})
    tenant_id = uuid_or_none(_str(authz, "tenant_id"))
    named = _str(authz, "endpoint")
    endpoint = (
        clip(named, MAX_PATH_CHARS)
        if named is not None and tenant_id is not None
        else endpoint_of(entry.method, entry.path, tenant_id is not None)
    )
    status = answered_status(entry, authz)
    error = f"http {status}" if status >= 400 else None
    backend = clip(entry.backend)
    # Here: this runs once per logged request, and knows the answered status.
    backendmetrics.observe(backend, status, entry.attempts, entry.first_byte_s)
    return AuditRow(
        request_id=clip(entry.request_id),
        ts=entry.start,
        tenant_id=tenant_id,
        key_prefix=_clip_or_none(_str(authz, "key_prefix")),
        method=clip(entry.method),
        endpoint=endpoint,
        model=clip(_str(authz, "model") or ""),
        status=status,
        tokens_in=None,
        tokens_out=None,
        tokens_estimated=False,
        latency_ms=entry.duration_ms,
        bytes_in=entry.bytes_in,
        bytes_out=entry.bytes_out,
        client_ip=clip(entry.client_ip),
        response_flags=clip(entry.response_flags),
        error=_clip_or_none(error),
        backend=backend,
        attempts=max(0, min(entry.attempts, MAX_ATTEMPTS)),
        reason=refusal_reason(entry, status),
        # An accounted request: its counts come from its observed stream's outcome, in this
        # process (Envoy sends a worker's ext_proc streams and its access log over one
        # connection). A refusal — 4xx/5xx before the backend — has none to wait for.
        awaiting_outcome=bool(_str(authz, "model")) and status < 400,
    )


def row_from_orphan(started: datetime, outcome: Outcome) -> AuditRow:
    """The row of a request whose pod died mid-stream (accounting/inflight.py, adopted by
    another replica): what authz decided, charged as settled; Envoy's view (bytes, latency,
    client address) died with the pod."""
    info = outcome.info
    found = endpoints.for_path(info.endpoint)
    return AuditRow(
        request_id=clip(info.request_id),
        ts=started,
        tenant_id=uuid_or_none(info.tenant_id),
        key_prefix=_clip_or_none(info.key_prefix or None),
        method="POST" if found is None else found.method,
        endpoint=clip(info.endpoint, MAX_PATH_CHARS),
        model=clip(info.model),
        status=outcome.status,
        tokens_in=outcome.counts.tokens_in,
        tokens_out=outcome.counts.tokens_out,
        tokens_estimated=outcome.counts.estimated,
        latency_ms=None,
        bytes_in=0,
        bytes_out=0,
        client_ip="",
        response_flags="",
        error=_clip_or_none(outcome.counts.error),
    )


# Envoy's response flags for a request the rate-limit filter refused (429) or could not check
# (503): it stopped after ext_authz admitted it and before ext_proc or the backend saw it.
_REFUSED_BY_RLS = frozenset({"RL", "RLSE"})


def refused_after_admission(entry: AccessEntry) -> bool:
    """authz admitted the request (slot, reservation), then the RLS refused it."""
    return bool(_REFUSED_BY_RLS.intersection(entry.response_flags.split(",")))


class AuditRows:
    """Completes rows from the stream outcomes before they are written."""

    def __init__(self, outcomes: Recent[Outcome]) -> None:
        self._outcomes = outcomes

    def ready(self, row: AuditRow) -> bool:
        if not row.awaiting_outcome:
            return True
        if self._complete(row):
            return True
        return time.monotonic() - row.received >= OUTCOME_WAIT_S

    def _complete(self, row: AuditRow) -> bool:
        outcome = self._outcomes.get(row.request_id)
        if outcome is None:
            return False
        counts = outcome.counts
        row.tokens_in = counts.tokens_in
        row.tokens_out = counts.tokens_out
        row.tokens_estimated = counts.estimated
        if counts.error:
            row.error = clip(counts.error)
        elif outcome.cut:
            row.error = row.error or "stream cut short"
        row.awaiting_outcome = False
        return True


# A request's row is written once (a retried batch changes nothing); an aggregate's snapshot
# only ever raises its count (accounting/denials.py).
_INSERT = """
INSERT INTO gateway.audit_log AS a (request_id, ts, tenant_id, key_prefix, method, endpoint,
    model, status, tokens_in, tokens_out, tokens_estimated, latency_ms, bytes_in, bytes_out,
    client_ip, response_flags, error, count, backend, attempts, reason)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::int[], $9::bigint[], $10::bigint[], $11::bool[],
    $12::float8[], $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::text[],
    $18::int[], $19::text[], $20::smallint[], $21::text[])
ON CONFLICT (request_id, ts) DO UPDATE
   SET count = EXCLUDED.count, bytes_in = EXCLUDED.bytes_in, bytes_out = EXCLUDED.bytes_out
 WHERE a.count < EXCLUDED.count
"""


def _columns(batch: Sequence[Any]) -> list[list[Any]]:
    return [
        [r.request_id for r in batch],
        [r.ts for r in batch],
        [r.tenant_id for r in batch],
        [r.key_prefix for r in batch],
        [r.method for r in batch],
        [r.endpoint for r in batch],
        [r.model for r in batch],
        [r.status for r in batch],
        [r.tokens_in for r in batch],
        [r.tokens_out for r in batch],
        [r.tokens_estimated for r in batch],
        [r.latency_ms for r in batch],
        [r.bytes_in for r in batch],
        [r.bytes_out for r in batch],
        [r.client_ip for r in batch],
        [r.response_flags for r in batch],
        [r.error for r in batch],
        [r.count for r in batch],
        [r.backend for r in batch],
        [r.attempts for r in batch],
        [r.reason for r in batch],
    ]


# Each key's last use (the admin API's ApiKey.last_used_at): the newest start among the batch's
# rows of requests it authenticated (a tenant is known only after the key check), never moved
# back. Keys are sent in prefix order, so two accountings' batches meet the keys they share in
# the same order.
_LAST_USED = """
UPDATE gateway.api_keys AS k
   SET last_used_at = u.ts
  FROM unnest($1::text[], $2::timestamptz[]) AS u(prefix, ts)
 WHERE k.prefix = u.prefix AND (k.last_used_at IS NULL OR k.last_used_at < u.ts)
"""


def last_uses(rows: Sequence[AuditRow]) -> dict[str, datetime]:
    """Per key prefix, the newest start among ``rows`` of requests the key authenticated."""
    newest: dict[str, datetime] = {}
    for row in rows:
        if row.key_prefix and row.tenant_id is not None:
            seen = newest.get(row.key_prefix)
            if seen is None or row.ts > seen:
                newest[row.key_prefix] = row.ts
    return dict(sorted(newest.items()))


async def write(pool: asyncpg.Pool, rows: list[AuditRow]) -> None:
    """One multi-row INSERT; a request id already present is skipped (idempotent), an
    aggregate present twice is written with its larger count. Then the keys' last use."""
    latest: dict[tuple[str, datetime], AuditRow] = {}
    for row in rows:
        seen = latest.get((row.request_id, row.ts))
        if seen is None or row.count > seen.count:
            latest[(row.request_id, row.ts)] = row
    unique = list(latest.values())
    await pgwrite.insert(pool, "audit_log", _INSERT, unique, _columns)
    used = last_uses(unique)
    if used:
        try:
            await pool.execute(_LAST_USED, list(used), list(used.values()))
        except asyncpg.PostgresError as exc:
            # The rows are written; one missed last use (a deadlock, a lock timeout) is mended
            # by the key's next request. Losing the connection raises past this: the batch is
            # kept and written again (idempotent), its last uses with it.
            _log.warning("last use of keys not recorded", error=type(exc).__name__)
