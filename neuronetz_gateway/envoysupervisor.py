"""Envoy under supervision: its probes (``/readyz``, ``/livez``), its admin API, and the drain
on SIGTERM (neuronetz_gateway/envoyrun.py is the command; docs/PLATFORM.md, "Draining")."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from neuronetz_gateway.envoyrun import active_requests, exit_code

# After the last request ended: Envoy's gRPC access log flushes every 0.1 s (envoy.yaml).
FLUSH_S = 1.0
POLL_S = 0.25
STOP_WAIT_S = 10.0  # Envoy answers SIGTERM at once; SIGKILL after this
ADMIN_TIMEOUT_S = 2.0
ADMIN_SILENT_S = 10.0  # no stats from the admin this long while draining: stop Envoy
_ADMIN_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class Admin:
    """Envoy's admin API over TCP or a Unix socket (compose keeps it on a socket)."""

    def __init__(self, url: str) -> None:
        self.url = url
        timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
        if url.startswith("unix:"):
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=url[len("unix:") :])
            self._base = "http://envoy-admin"
        else:
            connector = aiohttp.TCPConnector()
            self._base = url.rstrip("/")
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def get(self, path: str) -> tuple[int, str]:
        async with self._session.get(self._base + path) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str) -> int:
        async with self._session.post(self._base + path) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        await self._session.close()


# -- the supervisor ------------------------------------------------------------------------


@dataclass
class Supervisor:
    envoy: list[str]  # the binary and its arguments
    admin: Admin
    drain_timeout_s: float
    listener_drain_s: float
    log: Any
    draining: bool = False
    drain_requested: asyncio.Event = field(default_factory=asyncio.Event)
    stop_now: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None

    def on_signal(self, sig: signal.Signals) -> None:
        if self.drain_requested.is_set():
            self.log.warning("second signal: stopping Envoy now", signal=sig.name)
            self.stop_now.set()
            return
        self.drain_requested.set()

    async def ready(self) -> bool:
        if self.draining or self.proc is None or self.proc.returncode is not None:
            return False
        try:
            status, _ = await self.admin.get("/ready")
        except _ADMIN_ERRORS:
            return False
        return status == 200

    async def readyz(self, _: web.Request) -> web.Response:
        if await self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="draining\n" if self.draining else "not ready\n")

    async def livez(self, _: web.Request) -> web.Response:
        if self.proc is not None and self.proc.returncode is None:
            return web.Response(text="alive\n")
        return web.Response(status=503, text="envoy exited\n")

    async def _active(self) -> int | None:
        try:
            status, text = await self.admin.get("/stats?filter=downstream_rq_active")
        except _ADMIN_ERRORS:
            return None
        return active_requests(text) if status == 200 else None

    async def drain(self, exited: asyncio.Task[int]) -> None:
        """Fail readiness, drain Envoy's listeners, wait until no request is active (and the
        listeners have closed) or the drain timeout, whichever comes first."""
        started = time.monotonic()
        self.draining = True
        self.log.info("drain started", drain_timeout_s=self.drain_timeout_s)
        for path in ("/healthcheck/fail", "/drain_listeners?graceful"):
            try:
                status = await self.admin.post(path)
            except _ADMIN_ERRORS as exc:
                self.log.warning("envoy admin unreachable", path=path, error=type(exc).__name__)
                continue
            if status != 200:
                self.log.warning("envoy admin refused", path=path, status=status)
        self.log.info("listeners draining", listener_drain_s=self.listener_drain_s)
        deadline = started + self.drain_timeout_s
        active: int | None = None
        answered = started  # when the admin last told how many requests are active
        while not exited.done() and not self.stop_now.is_set():
            now = time.monotonic()
            if now >= deadline:
                self.log.warning("drain timeout: stopping Envoy", active_requests=active)
                return
            active = await self._active()
            if active is not None:
                answered = now
            elif now - answered >= ADMIN_SILENT_S:
                # Not started yet, or hung: either way it serves nothing worth waiting for.
                self.log.warning("envoy admin silent: stopping Envoy", silent_s=ADMIN_SILENT_S)
                return
            if active == 0 and now - started >= self.listener_drain_s:
                self.log.info("no request active", drained_s=round(now - started, 1))
                # Envoy's last access-log entries (and ext_proc messages) reach accounting.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_now.wait(), FLUSH_S)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_now.wait(), POLL_S)

    async def stop_envoy(self, exited: asyncio.Task[int]) -> None:
        assert self.proc is not None
        if exited.done():
            return
        self.log.info("stopping envoy")
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_WAIT_S)
        except TimeoutError:
            self.log.warning("envoy ignored SIGTERM: killing it")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def run(self, probe_addr: str, probe_port: int) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/livez", self.livez)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, probe_addr, probe_port).start()
            self.proc = await asyncio.create_subprocess_exec(
                *self.envoy, stdin=asyncio.subprocess.DEVNULL
            )
            self.log.info("envoy started", pid=self.proc.pid, probe=f"{probe_addr}:{probe_port}")
            exited = asyncio.ensure_future(self.proc.wait())
            asked = asyncio.ensure_future(self.drain_requested.wait())
            await asyncio.wait({exited, asked}, return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            if not exited.done():
                await self.drain(exited)
                await self.stop_envoy(exited)
            code = exit_code(await exited)
            self.log.info("envoy exited", exit_code=code)
            return code
        finally:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await runner.cleanup()
            await self.admin.close()
