"""``neuronetz-gateway envoy run``: how it reads Envoy's command line and admin stats, and how
the supervisor answers probes and signals around a real Envoy (the whole drain with streams
and accounting: tests/e2e/test_drain.py)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.processes import free_port
from neuronetz_gateway.envoyrun import (
    LISTENER_DRAIN_S,
    SetupError,
    active_requests,
    admin_from_args,
    envoy_arguments,
    exit_code,
)
from tests.polling import poll

ROOT = Path(__file__).resolve().parents[2]


# -- Envoy's command line and stats ----------------------------------------------------------


def test_the_drain_defaults_are_added_unless_given() -> None:
    args, drain = envoy_arguments(["--", "-c", "e.yaml"])
    assert args == [
        *["-c", "e.yaml"],
        *["--drain-time-s", str(LISTENER_DRAIN_S), "--drain-strategy", "immediate"],
        *["--file-flush-interval-msec", "1000"],
    ]
    assert drain == LISTENER_DRAIN_S == 5
    given = ["-c", "e.yaml", "--drain-time-s=2", "--drain-strategy", "gradual"]
    args, drain = envoy_arguments([*given, "--file-flush-interval-msec=250"])
    assert args == [*given, "--file-flush-interval-msec=250"]
    assert drain == 2
    with pytest.raises(SetupError, match="--drain-time-s 'soon' is not a number"):
        envoy_arguments(["--drain-time-s", "soon"])


def test_the_admin_address_is_read_from_the_config_and_its_overrides(tmp_path: Path) -> None:
    shipped = str(ROOT / "envoy" / "envoy.yaml")
    assert admin_from_args(["-c", shipped]) == "http://127.0.0.1:9901"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    command = compose["services"]["envoy"]["command"]
    envoy_args = command[command.index("--") + 1 :]
    envoy_args[envoy_args.index("-c") + 1] = shipped
    assert admin_from_args(envoy_args) == "unix:/tmp/envoy-admin.sock"
    wildcard = tmp_path / "e.yaml"
    wildcard.write_text("admin: {address: {socket_address: {address: 0.0.0.0, port_value: 19000}}}")
    assert admin_from_args([f"--config-path={wildcard}"]) == "http://127.0.0.1:19000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "/nonexistent/envoy.yaml"], "cannot read the Envoy config /nonexistent/envoy.yaml"),
        (["--config-yaml", "static_resources: {}"], "no admin address: pass --admin"),
        (["--config-yaml", "admin: ["], "config is not YAML"),
    ],
)
def test_no_admin_address_is_a_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(SetupError, match=message):
        admin_from_args(args)


def test_active_requests_count_every_listener_but_the_admin() -> None:
    stats = (
        "http.admin.downstream_rq_active: 1\n"
        "http.gateway.downstream_rq_active: 3\n"
        "http.other.downstream_rq_active: 2\n"
        "http.gateway.downstream_rq_total: 9\n"
    )
    assert active_requests(stats) == 5
    assert active_requests("http.admin.downstream_rq_active: 1\n") == 0


def test_exit_code_is_envoys_as_a_shell_reports_it() -> None:
    assert [exit_code(0), exit_code(1), exit_code(-9)] == [0, 1, 137]


# -- the supervisor around a real Envoy -------------------------------------------------------

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def envoy_config(admin: int, listener: int, upstream: int) -> dict[str, Any]:
    """One listener to one model server; the admin as envoy.yaml allows it."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0s"}}
    manager = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "l",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
    }
    shipped = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8"))
    endpoint = {"endpoint": {"address": _address(upstream)}}
    return {
        "admin": {"address": _address(admin), "allow_paths": shipped["admin"]["allow_paths"]},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": _address(listener),
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": manager}]}],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ],
        },
    }


class Supervised:
    def __init__(self, proc: subprocess.Popen[bytes], listener: int, probe: int) -> None:
        self.proc = proc
        self.listener = listener
        self.probe = probe

    def status(self, path: str) -> int | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.probe}{path}", timeout=1).status_code
        except httpx.TransportError:
            return None


@pytest.fixture
def hanging_upstream() -> Iterator[int]:
    """A model server that accepts and never answers: a request through Envoy stays active."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def supervise(tmp_path: Path, upstream: int, *options: str) -> Supervised:
    listener, admin, probe = free_port(), free_port(), free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy_config(admin, listener, upstream)))
    command = [sys.executable, "-m", "neuronetz_gateway", "envoy", "run"]
    command += ["--probe-port", str(probe), *options, "--", "-c", str(config)]
    command += ["--disable-hot-restart", "--concurrency", "1", "-l", "critical"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    supervised = Supervised(proc, listener, probe)
    poll(lambda: supervised.status("/readyz") == 200, 15.0, what="envoy ready")
    return supervised


def hang_a_request(supervised: Supervised) -> threading.Thread:
    def call() -> None:
        url = f"http://127.0.0.1:{supervised.listener}/"
        with contextlib.suppress(httpx.TransportError):  # cut when Envoy stops
            httpx.get(url, timeout=30)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_sigterm_fails_readiness_and_waits_for_the_active_request(
    tmp_path: Path, hanging_upstream: int
) -> None:
    supervised = supervise(tmp_path, hanging_upstream, "--drain-timeout", "2")
    assert supervised.status("/livez") == 200
    hang_a_request(supervised)
    time.sleep(0.3)
    supervised.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert poll(lambda: supervised.status("/readyz") == 503, 2.0, what="readiness failing")
    assert supervised.status("/livez") == 200  # draining, not dead
    assert supervised.proc.wait(timeout=10) == 0  # Envoy's exit code
    waited = time.monotonic() - started
    assert 2.0 <= waited < 4.0  # the request never ended: the drain timeout stopped Envoy
    assert supervised.proc.stderr is not None
    events = {e["event"]: e for e in _log(supervised.proc.stderr.read())}
    assert events["drain timeout: stopping Envoy"]["active_requests"] == 1
    assert events["envoy exited"]["exit_code"] == 0


def _log(stderr: bytes) -> list[dict[str, Any]]:
    """The supervisor's JSON log lines (Envoy's own lines are not JSON)."""
    return [json.loads(ln) for ln in stderr.decode().splitlines() if ln.startswith("{")]


def test_a_second_sigterm_stops_envoy_at_once(tmp_path: Path, hanging_upstream: int) -> None:
    supervised = supervise(tmp_path, hanging_upstream)  # drain timeout: the default 870 s
    hang_a_request(supervised)
    time.sleep(0.3)
    supervised.proc.send_signal(signal.SIGTERM)
    poll(lambda: supervised.status("/readyz") == 503, 2.0, what="readiness failing")
    time.sleep(0.5)
    assert supervised.proc.poll() is None  # still draining
    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.proc.wait(timeout=5) == 0


def test_envoy_refusing_its_config_ends_the_supervisor_with_envoys_code(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"
        "static_resources: {listeners: [{name: x}]}\n"
    )
    command = [sys.executable, "-m", "neuronetz_gateway", "envoy", "run"]
    command += ["--probe-port", str(free_port()), "--", "-c", str(config), "-l", "critical"]
    result = subprocess.run(command, capture_output=True, timeout=30)
    assert result.returncode == 1  # Envoy's own exit code for a config it refuses
    assert {"event": "envoy exited", "exit_code": 1}.items() <= _log(result.stderr)[-1].items()


def test_without_envoy_arguments_it_refuses_to_start() -> None:
    command = [sys.executable, "-m", "neuronetz_gateway", "envoy", "run"]
    result = subprocess.run(command, capture_output=True, timeout=30)
    assert result.returncode == 2
    assert b"no Envoy arguments: envoy run -- -c /etc/envoy/envoy.yaml" in result.stderr
