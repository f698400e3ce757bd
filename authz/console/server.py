"""The operator console's HTTP server: one page and its JSON bridge, in the authz process.

On ``console_listen`` (``NZ_CONSOLE_LISTEN``; "" by default: off), loopback like the admin API
it sits beside. It serves:

* ``GET /console/``: the page (``index.html``, package data): self-contained, no third-party
  asset, its one script and one style allowed by hash in the Content-Security-Policy;
* ``POST /console/api/<Method>``: the admin API's read methods (:mod:`authz.console.bridge`).

Every answer carries the same strict headers (:func:`security_headers`). The page keeps the
admin token in its memory only and sends it on each call; the admin API checks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

import grpc
from aiohttp import web

from authz.console.bridge import Bridge
from gateway import logs, pagecsp
from gateway.settings import Settings, is_loopback, reach

PATH = "/console/"
_API = "/console/api/"
_MAX_BODY_BYTES = 64 * 1024  # a console request is a few hundred bytes
_log = logs.get("console")


def page() -> str:
    """The console's HTML, as shipped in the package."""
    return resources.files("authz.console").joinpath("index.html").read_text(encoding="utf-8")


def security_headers(html: str) -> dict[str, str]:
    """The headers on every answer, the page's, the bridge's and the errors' alike."""
    return {
        "Content-Security-Policy": pagecsp.csp(html),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Server": "neuronetz-gateway console",
    }


def make_app(bridge: Bridge, html: str) -> web.Application:
    headers = security_headers(html)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)

    async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def to_page(_: web.Request) -> web.Response:
        raise web.HTTPFound(PATH)

    async def api(request: web.Request) -> web.Response:
        started = time.monotonic()
        name = request.match_info["method"]
        body = await request.read()
        answer = await bridge.call(name, body, request.headers.get("Authorization"))
        _log.info(
            "console_call",
            method=name,
            status=answer.status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return web.json_response(answer.body, status=answer.status)

    app.on_response_prepare.append(add_headers)
    app.router.add_get("/", to_page)
    app.router.add_get("/console", to_page)
    app.router.add_get(PATH, index)
    app.router.add_post(_API + "{method}", api)
    return app


@dataclass
class Console:
    """The running console (:func:`start`); :meth:`close` stops it."""

    runner: web.AppRunner
    channel: grpc.aio.Channel
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.channel.close()


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def start(cfg: Settings) -> Console | None:
    """Serve the console on ``cfg.console_listen``; None (and nothing served) when it is "".
    The bridge reaches the admin API on its own listen address (a wildcard: loopback)."""
    if not cfg.console_listen:
        return None
    host, port = _split(cfg.console_listen)
    if not is_loopback(host):
        _log.warning("console_not_loopback", listen=cfg.console_listen)
    channel = grpc.aio.insecure_channel(reach("", cfg.admin_listen))
    runner = web.AppRunner(make_app(Bridge(channel), page()), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=cfg.worker or None).start()
    except BaseException:
        await runner.cleanup()
        await channel.close()
        raise
    url = f"http://{cfg.console_listen}{PATH}"
    _log.info("console_serving", url=url)
    return Console(runner, channel, url)
