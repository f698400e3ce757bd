"""Streams at scale (issue 10 §6): many concurrent streamed ``/api/chat`` requests of an exact
number of NDJSON frames, and the CPU each process spends on them.

The mock Ollama streams one content frame per output token (``options.num_predict``) and then
the final ``done`` frame, so a stream of ``frames`` NDJSON lines asks for ``frames - 1``
tokens. A stream counts only when it answers 200 with exactly that many lines, the last one
``"done": true`` with ``eval_count == frames - 1`` and no ``error``; anything else (a refusal,
a short or cut stream, an error frame, a client error) is an error.

Each of ``streams`` workers runs streams back to back until ``seconds`` have passed (at least
one each), so ``streams`` are in flight the whole time. The CPU of the processes is read
(psutil user + system, the process and its children) before the first stream and after the
last one has settled: the gateway's accounting settles after the stream ends (access log,
batched audit rows), and that work belongs to the streams too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

STREAMS = 64
FRAMES = 200
MODEL = "llama3.2"


Counter = Callable[[], Awaitable[float]]


def stream_body(frames: int) -> dict[str, Any]:
    """A streamed chat of exactly ``frames`` NDJSON lines from the mock: frames - 1 tokens,
    one per content frame, then the done frame."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "stream me please"}],
        "stream": True,
        "options": {"num_predict": frames - 1},
    }


def complete(status: int, lines: int, tail: bytes, frames: int) -> bool:
    """Whether a stream delivered all it should: 200, ``frames`` lines, a final done frame
    with the full token count and no error."""
    if status != 200 or lines != frames:
        return False
    try:
        last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    except ValueError:
        return False
    return (
        isinstance(last, dict)
        and last.get("done") is True
        and "error" not in last
        and last.get("eval_count") == frames - 1
    )


class CpuMeter:
    """CPU seconds (user + system) of named processes and their children, and of this
    process (``client``: the load generator shares the machine's cores)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.me = psutil.Process()

    def sample(self) -> dict[str, float]:
        found = {name: _cpu_s(proc) for name, proc in self.procs.items()}
        mine = self.me.cpu_times()
        return {**found, "client": mine.user + mine.system}


def _cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in family:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass
class StreamRun:
    """What one scenario measured on one target."""

    durations: list[float]  # seconds, each complete stream from request to last byte
    errors: int
    frames: int  # NDJSON lines received in 200 answers (complete or not)
    wall_s: float  # first request to last byte
    cpu_s: dict[str, float]  # CPU spent during the scenario, per process
    counted: float | None  # the delta of the target's counter, if one was given


@dataclass
class _Tally:
    durations: list[float]
    errors: int = 0
    frames: int = 0


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: Mapping[str, str],
    frames: int,
    tally: _Tally,
) -> None:
    start = time.perf_counter()
    lines, tail, status = 0, b"", 0
    try:
        async with session.post(url, data=payload, headers=headers) as resp:
            status = resp.status
            async for chunk in resp.content.iter_any():
                lines += chunk.count(b"\n")
                tail = (tail + chunk)[-4096:]  # the final frame is a few hundred bytes
    except (aiohttp.ClientError, TimeoutError):
        status = 0
    if status == 200:
        tally.frames += lines
    if complete(status, lines, tail, frames):
        tally.durations.append(time.perf_counter() - start)
    else:
        tally.errors += 1


async def _drive(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    streams: int,
    frames: int,
    seconds: float,
) -> tuple[_Tally, float]:
    payload = json.dumps(stream_body(frames)).encode()
    tally = _Tally(durations=[])
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        while True:
            await _one(session, url, payload, headers, frames, tally)
            if time.perf_counter() >= deadline:
                return

    await asyncio.gather(*(worker() for _ in range(streams)))
    return tally, time.perf_counter() - start


async def run(
    url: str,
    key: str,
    meter: CpuMeter,
    streams: int = STREAMS,
    frames: int = FRAMES,
    seconds: float = 5.0,
    frame_delay_ms: int = 0,
    settled: Callable[[], Awaitable[None]] | None = None,
    counter: Counter | None = None,
) -> StreamRun:
    """``streams`` concurrent streams of ``frames`` frames against ``url`` (a listener's base
    URL) for ``seconds``, the mock pausing ``frame_delay_ms`` between frames; ``settled`` (if
    any) returns once the target has finished its work on them, before the CPU (and
    ``counter``, a counter of the target's) is read again."""
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    if frame_delay_ms:
        headers["x-mock-frame-delay-ms"] = str(frame_delay_ms)
    chat = f"{url}/api/chat"
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm up: open the connections and the caches with one short stream per worker.
        await _drive(session, chat, headers, streams, 8, 0.0)
        if settled is not None:
            await settled()
        before, count = meter.sample(), await counter() if counter else 0.0
        tally, wall = await _drive(session, chat, headers, streams, frames, seconds)
        if settled is not None:
            await settled()
        after = meter.sample()
        counted = await counter() - count if counter else None
    cpu = {name: after[name] - before[name] for name in before}
    return StreamRun(tally.durations, tally.errors, tally.frames, wall, cpu, counted)


def metric_sum(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples over all its labels (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def accounting_settled(metrics_url: str, timeout_s: float = 15.0) -> Callable[[], Awaitable[None]]:
    """Waits until accounting has nothing left to do: its count of accounted streams
    (``accounting_streams_total``) has stopped moving and no audit row waits to be written
    (``accounting_buffered_rows``). Bounded by ``timeout_s``; returns anyway then."""

    async def wait() -> None:
        async with aiohttp.ClientSession() as session:

            async def read() -> tuple[float, float]:
                async with session.get(metrics_url) as resp:
                    text = await resp.text()
                streams = metric_sum(text, "accounting_streams_total")
                return streams, metric_sum(text, "accounting_buffered_rows")

            deadline = time.monotonic() + timeout_s
            last, _ = await read()
            quiet = 0
            while time.monotonic() < deadline:
                # The access log flushes every 0.1 s, audit batches on their own interval:
                # settled when the count held for 3 polls in a row with nothing buffered.
                await asyncio.sleep(0.25)
                now, buffered = await read()
                quiet = quiet + 1 if now == last and buffered == 0 else 0
                if quiet >= 3:
                    return
                last = now

    return wait


def envoy_counter(admin_url: str, suffix: str) -> Counter:
    """Reads an Envoy counter from its admin ``/stats`` by the end of its name (the stat
    prefix of the listener is the config's): the sum of the counters that match."""

    async def read() -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{admin_url}/stats", params={"filter": suffix}) as resp,
        ):
            text = await resp.text()
        return sum(
            float(value)
            for name, _, value in (line.partition(": ") for line in text.splitlines())
            if name.endswith(suffix) and value.isdigit()
        )

    return read
