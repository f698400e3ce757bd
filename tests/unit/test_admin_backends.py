"""The admin API's view of the configured backends: ListModels and ProbeBackends name each
backend, list them by priority then configuration order, find one by name or URL, and probe
with the backend's credentials without ever showing them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from argon2 import PasswordHasher
from pydantic import SecretStr

from authz.admin import convert
from authz.admin.errors import NotFound
from authz.admin.operations import Admin
from gateway.backends import Backend
from protos.neuronetz.admin.v1 import admin_pb2 as pb

SECRET = SecretStr("Bearer hosted-ollama-secret-value")
# Configuration order: cloud first, but gpu and spare have the lower priority.
CONFIGURED = (
    Backend("cloud", "https://ollama.example", 1),
    Backend("gpu", "http://gpu-box:11434", 0),
    Backend("spare", "http://spare:11434", 0),
)


class Snapshot:
    """Discovery's snapshot: only live backends have a list (keyed by URL)."""

    def __init__(self, found: dict[str, frozenset[str]]) -> None:
        self.found = found

    def snapshot(self) -> dict[str, frozenset[str]]:
        return self.found


@pytest.fixture
def admin(no_postgres: asyncpg.Pool) -> Admin:
    live = {
        "http://gpu-box:11434": frozenset({"qwen2.5:0.5b", "llama3.2:latest"}),
        "https://ollama.example": frozenset({"gpt-oss:20b-cloud"}),
    }
    return Admin(no_postgres, PasswordHasher(), CONFIGURED, discovery=Snapshot(live))


def test_list_models_names_every_backend_by_priority_then_config_order(admin: Admin) -> None:
    answer = convert.backend_models_pb(admin.list_models())
    assert list(answer.backends) == [
        pb.BackendModels(
            name="gpu",
            backend="http://gpu-box:11434",
            priority=0,
            live=True,
            models=["llama3.2:latest", "qwen2.5:0.5b"],
        ),
        # spare has no fresh list: listed, not live, no models (it does not vanish)
        pb.BackendModels(name="spare", backend="http://spare:11434", priority=0, live=False),
        pb.BackendModels(
            name="cloud",
            backend="https://ollama.example",
            priority=1,
            live=True,
            models=["gpt-oss:20b-cloud"],
        ),
    ]


@pytest.mark.parametrize(
    "ref", ["cloud", "https://ollama.example", "https://ollama.example/", " cloud "]
)
def test_list_models_finds_one_backend_by_name_or_url(admin: Admin, ref: str) -> None:
    [one] = convert.backend_models_pb(admin.list_models(ref)).backends
    assert (one.name, one.backend, one.live, list(one.models)) == (
        "cloud",
        "https://ollama.example",
        True,
        ["gpt-oss:20b-cloud"],
    )


@pytest.mark.parametrize("ref", ["gpu-box", "http://gpu-box", "http://elsewhere:11434", "GPU"])
def test_list_models_of_neither_a_name_nor_a_url_is_not_found(admin: Admin, ref: str) -> None:
    with pytest.raises(NotFound) as excinfo:
        admin.list_models(ref)
    assert str(excinfo.value) == f"no backend {ref!r}"


def test_without_discovery_every_backend_is_listed_not_live(no_postgres: asyncpg.Pool) -> None:
    admin = Admin(no_postgres, PasswordHasher(), CONFIGURED)
    listed = admin.list_models()
    assert [(b.name, b.live, b.models) for b in listed] == [
        ("gpu", False, ()),
        ("spare", False, ()),
        ("cloud", False, ()),
    ]


# -- probing ---------------------------------------------------------------------------------


@pytest.fixture
async def hosted() -> AsyncIterator[str]:
    """A hosted Ollama: its /api/tags answers only with the credential (the base URL)."""

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def tags(request: web.Request) -> web.Response:
        if request.headers.get("authorization") != SECRET.get_secret_value():
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"models": [{"name": "gpt-oss:20b-cloud"}, {"name": "x"}]})

    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_probe_sends_the_credentials_and_reports_in_priority_order(
    no_postgres: asyncpg.Pool, hosted: str
) -> None:
    configured = (
        Backend("cloud", hosted, 1, {"authorization": SECRET}),
        Backend("no-credentials", hosted, 1),
        Backend("down", "http://127.0.0.1:1", 0),
    )
    admin = Admin(no_postgres, PasswordHasher(), configured)
    answer = pb.ProbeBackendsResponse(
        backends=[convert.probe_pb(p) for p in await admin.probe_backends(2.0)]
    )
    down, cloud, bare = answer.backends
    assert (down.name, down.priority, down.url, down.reachable) == (
        "down",
        0,
        "http://127.0.0.1:1",
        False,
    )
    assert down.error
    assert (cloud.name, cloud.priority, cloud.url) == ("cloud", 1, hosted)
    assert (cloud.reachable, cloud.version, cloud.model_count, cloud.error) == (
        True,
        "0.12.3",
        2,
        "",
    )
    assert (bare.name, bare.reachable, bare.error) == (
        "no-credentials",
        False,
        "/api/tags answered HTTP 401",
    )
    assert "hosted-ollama-secret-value" not in str(answer)


async def test_a_credential_quoted_in_an_error_is_masked(no_postgres: asyncpg.Pool) -> None:
    # An unresolvable host whose name contains the key: aiohttp's error quotes the host.
    key = SecretStr("leaky-secret")
    leaky = Backend("leaky", "http://leaky-secret.invalid", 0, {"x-api-key": key})
    admin = Admin(no_postgres, PasswordHasher(), (leaky,))
    [found] = await admin.probe_backends(2.0)
    assert found.reachable is False
    assert "leaky-secret" not in found.error
    assert "**********.invalid" in found.error
