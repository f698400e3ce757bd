"""A stand-in model server for unit tests: one route answering ``{"models": [...]}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve_models(path: str, models: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    """Serve ``{"models": models}`` at ``GET path`` on a free loopback port; (runner, base URL)."""

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"models": models})

    app = web.Application()
    app.router.add_get(path, answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
