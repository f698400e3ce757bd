"""After a stream: release its concurrency slot, debit its tokens/min at the RLS, write its
ledger row, settle its budget reservation to the real count — and while it streams, renew its
leases. All in the background, never in the response path.

Order matters for budgets: the Redis *used* counters are debited only once the ledger row is
in Postgres (or after ``ledger_wait_s``, so a Postgres outage does not hold reservations for
long), so a counter rebuilt from the ledger never misses a request that Redis had counted.
Until it is settled, the request's reservation (an upper bound) still counts against the
budget: a budget is never overshot while settlement waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import Counter

from accounting import inflight
from accounting.batches import Batcher
from accounting.inflight import InFlight
from accounting.inflight import instance_name as inflight_instance
from accounting.ledger import LedgerRow
from accounting.promptlog import PromptRow
from accounting.recent import Recent
from accounting.rlsdebit import TokenDebits
from accounting.stream import Outcome, RequestInfo
from gateway import budgets, leases, logs, slots
from gateway.leases import Leases
from gateway.storage import Store
from gateway.storeerrors import REDIS_ERRORS

TOKENS = Counter("accounting_tokens_total", "tokens accounted", ["tenant", "direction"])
REQUESTS = Counter("accounting_streams_total", "accounted streams", ["tenant", "result"])
SETTLE_ERRORS = Counter("accounting_settle_errors_total", "failed Redis settlements")
RENEWALS = Counter("accounting_lease_renewals_total", "lease renewals of live streams")

_log = logs.get("accounting")
_RETRY_FOR_S = 30.0


class Settler:
    def __init__(
        self,
        redis: Store,
        ledger: Batcher[LedgerRow],
        prompts: Batcher[PromptRow],
        outcomes: Recent[Outcome],
        to_ledger: Callable[[Outcome], LedgerRow | None],
        to_prompt: Callable[[Outcome], PromptRow | None],
        *,
        ledger_wait_s: float = 2.0,
        concurrency: int = 64,
        leases: Leases | None = None,
        debits: TokenDebits | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self._redis = redis
        self._leases = leases or Leases()
        self._debits = debits
        self._inflight = inflight or InFlight(redis, inflight_instance(""))
        self._ledger = ledger
        self._prompts = prompts
        self._outcomes = outcomes
        self._to_ledger = to_ledger
        self._to_prompt = to_prompt
        self._ledger_wait = ledger_wait_s
        self._queue: asyncio.Queue[Outcome] = asyncio.Queue()
        self._written: dict[str, asyncio.Event] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._side_tasks: set[asyncio.Task[None]] = set()

    def submit(self, outcome: Outcome) -> None:
        """Hand a finished request over (never waits)."""
        self._outcomes.put(outcome.info.request_id, outcome)
        self._queue.put_nowait(outcome)

    def track(self, info: RequestInfo) -> None:
        """A request's observed stream began: its leases are renewed until :meth:`untrack`,
        and it is in the in-flight snapshot (accounting/inflight.py)."""
        self._inflight.add(info)

    def untrack(self, info: RequestInfo) -> None:
        self._inflight.remove(info)

    async def recover(self) -> int:
        """Settle what an earlier accounting of this instance left open (at start, until
        Redis answers): each request from its reservation, its slot given back. How many
        there were."""
        while True:
            try:
                await self._inflight.snapshot()  # alive first: nobody adopts what it takes
                orphans = await self._inflight.orphans()
                break
            except REDIS_ERRORS as exc:
                _log.warning("in-flight snapshot unreadable", error=type(exc).__name__)
                await asyncio.sleep(1.0)
        for outcome in orphans:
            _log.warning(
                "settling a stream open when accounting stopped",
                tenant=outcome.info.tenant,
                charged=outcome.counts.total,
            )
            self.submit(outcome)
        return len(orphans)

    async def adopt(self, audit: Callable[[inflight.Open, Outcome], None]) -> None:
        """Every few seconds, take what dead accountings of other instances left open
        (accounting/inflight.py): settle each request from its reservation, and hand it to
        ``audit`` — its pod's Envoy is gone with it, no access-log entry will come."""
        while True:
            await asyncio.sleep(inflight.ADOPT_AFTER_S / 2)
            try:
                taken = await inflight.adopt(self._redis, self._inflight.instance)
            except REDIS_ERRORS as exc:
                _log.warning("adopting dead instances failed", error=type(exc).__name__)
                continue
            for instance, entries in taken.items():
                _log.warning(
                    "settling streams of a dead accounting", instance=instance, streams=len(entries)
                )
                for entry in entries:
                    outcome = inflight.orphan_outcome(entry.info, inflight.ADOPTED)
                    self.submit(outcome)
                    audit(entry, outcome)

    async def snapshots(self) -> None:
        """Keep the in-flight snapshot in Redis current."""
        while True:
            await asyncio.sleep(inflight.SNAPSHOT_S)
            try:
                await self._inflight.snapshot()
            except REDIS_ERRORS as exc:
                SETTLE_ERRORS.inc()
                _log.warning("in-flight snapshot failed", error=type(exc).__name__)

    async def renew_leases(self) -> None:
        """Every renewal period, push the leases of every live request (one pipeline): a
        request holds its slot and reservation while its stream lives, however long it is
        silent, and loses them one lease after accounting stops renewing (it died)."""
        while True:
            await asyncio.sleep(self._leases.renew_every_s)
            live = [i for i in self._inflight.open.values() if i.slot or i.reserved]
            if not live:
                continue
            try:
                await leases.renew_all(
                    self._redis,
                    self._leases,
                    [(i.tenant_id, i.key_id, i.request_id) for i in live],
                )
                RENEWALS.inc(len(live))
            except REDIS_ERRORS as exc:
                # The next period tries again; two missed renewals still leave a third.
                SETTLE_ERRORS.inc()
                _log.warning("lease renewal failed", error=type(exc).__name__)

    def give_back(self, info: RequestInfo) -> None:
        """A request authz admitted but a filter after it refused (the RLS's 429, or 503 when
        the RLS failed): it reached neither ext_proc nor the backend and consumed nothing. Its
        slot comes back and its reservation settles at zero (never waits)."""
        if not info.tenant_id or not info.request_id or not (info.slot or info.reserved):
            return
        task = asyncio.create_task(self._give_back(info))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _give_back(self, info: RequestInfo) -> None:
        if info.slot and info.key_id:
            await self._retry(
                lambda: slots.release(self._redis, info.tenant_id, info.key_id, info.request_id)
            )
        await self._retry(lambda: budgets.settle(self._redis, info.tenant_id, info.request_id, 0))

    def ledger_written(self, rows: list[LedgerRow]) -> None:
        """Called by the ledger writer once ``rows`` are in Postgres."""
        for row in rows:
            event = self._written.pop(row.request_id, None)
            if event is not None:
                event.set()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._tasks) + len(self._side_tasks)

    async def wait_idle(self, timeout_s: float) -> None:
        """Wait (bounded) until every submitted outcome is settled (at shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        while True:
            outcome = await self._queue.get()
            await self._limit.acquire()
            task = asyncio.create_task(self._settle(outcome))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._limit.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("settlement failed", error=repr(task.exception()))

    async def _settle(self, outcome: Outcome) -> None:
        info = outcome.info
        counts = outcome.counts
        tenant = info.tenant or "unknown"
        TOKENS.labels(tenant, "in").inc(counts.tokens_in)
        TOKENS.labels(tenant, "out").inc(counts.tokens_out)
        result = "error" if counts.error else ("cut" if outcome.cut else "ok")
        REQUESTS.labels(tenant, result).inc()
        if not info.tenant_id or not info.request_id:
            return
        written: asyncio.Event | None = None
        row = self._to_ledger(outcome)
        if row is not None:
            written = asyncio.Event()
            self._written[info.request_id] = written
            if not self._ledger.add(row):
                self._written.pop(info.request_id, None)
                written = None
        prompt = self._to_prompt(outcome)
        if prompt is not None:
            self._prompts.add(prompt)
        if info.slot and info.key_id:
            await self._retry(
                lambda: slots.release(self._redis, info.tenant_id, info.key_id, info.request_id)
            )
        if self._debits is not None:
            # The RLS owns the tokens/min windows: the stream's tokens are debited there.
            self._debits.add(info, counts.total)
        if written is not None and self._ledger.healthy:
            # (While Postgres is down, waiting would only hold reservations longer.)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(written.wait(), timeout=self._ledger_wait)
        if written is not None:
            self._written.pop(info.request_id, None)
        await self._retry(
            lambda: budgets.settle(self._redis, info.tenant_id, info.request_id, counts.total)
        )

    async def _retry(self, op: Callable[[], object]) -> None:
        delay = 0.05
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RETRY_FOR_S
        while True:
            try:
                result = op()
                if asyncio.iscoroutine(result):
                    await result
                return
            except REDIS_ERRORS as exc:
                SETTLE_ERRORS.inc()
                if loop.time() >= deadline:
                    _log.error("giving up on a Redis settlement", error=type(exc).__name__)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
