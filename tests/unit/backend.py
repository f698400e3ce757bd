"""A stand-in model server for unit tests: routes answering ``{"models": [...]}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve_models(
    path: str, models: list[dict[str, Any]], **more: list[dict[str, Any]]
) -> tuple[web.AppRunner, str]:
    """Serve ``{"models": models}`` at ``GET path`` (and each of ``more``, by the path it
    names: ``api_ps=[...]`` at ``/api/ps``) on a free loopback port; (runner, base URL)."""

    def answer(listed: list[dict[str, Any]]) -> Any:
        async def handle(_: web.Request) -> web.Response:
            return web.json_response({"models": listed})

        return handle

    app = web.Application()
    app.router.add_get(path, answer(models))
    for name, listed in more.items():
        app.router.add_get("/" + name.replace("_", "/"), answer(listed))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
