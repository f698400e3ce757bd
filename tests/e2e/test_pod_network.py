"""The pod's processes in a network namespace of their own, probed from outside the way the
kubelet does (issue 14 §2): a veth pair gives the namespace its own address, as a pod has; the
whole stack (the three services, Envoy, their PostgreSQL and Redis) runs inside with the
settings the manifests give (``NZ_METRICS_ADDR=0.0.0.0``; Envoy's listener on 0.0.0.0 as in
envoy/envoy.yaml, Envoy under ``neuronetz-gateway envoy run`` as its image runs it). From the
host side: every service's ``/readyz`` and ``/livez`` and Envoy's probe port answer 200 on the
pod IP, Envoy's listener answers (the gateway's 401 without a key), and nothing else is
reachable: the gRPC ports (authz, ratelimit, accounting, admin), the operator console (on, as
the dev stack runs it), Envoy's admin, PostgreSQL, Redis and the mock Ollama refuse the
connection.

Needs root (``ip netns``); skipped with the reason when the namespace cannot be made."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests import probes
from tests.polling import poll

pytestmark = pytest.mark.slow

LISTENER = 8080  # envoy.yaml's listener port, as in the pod
SERVICES = ("authz", "ratelimit", "accounting")
GRPC_PORTS = ("authz", "ratelimit", "accounting", "admin")
CONSOLE = "console"  # authz's operator page (NZ_CONSOLE_LISTEN, loopback by default)
LOCAL_ONLY = ("postgres", "redis", "mock_ollama")  # the pod's neighbours here, loopback only
_CLI = Path(sys.executable).parent / "neuronetz-gateway"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Pod:
    ns: str  # the network namespace
    ip: str
    state: dict[str, Any]  # the dev command's --state-file

    def port(self, name: str) -> int:
        return int(self.state["ports"][name])


def _kill_namespace(ns: str) -> None:
    """Every process still in the namespace (the dev command's children included)."""
    pids = _ip("netns", "pids", ns).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot make a network namespace")
    tag = os.getpid() % 100_000
    ns, host_if, pod_if = f"nzpod{tag}", f"nzh{tag}", f"nzp{tag}"
    block = tag % 16384  # a /30 of 10.231.0.0/16 of its own per run: .1 host, .2 pod
    prefix = f"10.231.{block // 64}"
    host_ip, pod_ip = f"{prefix}.{block % 64 * 4 + 1}", f"{prefix}.{block % 64 * 4 + 2}"
    made = _ip("netns", "add", ns)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` not permitted here: {made.stderr.strip()}")
    work = tmp_path_factory.mktemp("pod")
    state_file = work / "state.json"
    proc: subprocess.Popen[bytes] | None = None
    try:
        _must("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        _must("link", "set", pod_if, "netns", ns)
        _must("addr", "add", f"{host_ip}/30", "dev", host_if)
        _must("link", "set", host_if, "up")
        _must("-n", ns, "addr", "add", f"{pod_ip}/30", "dev", pod_if)
        _must("-n", ns, "link", "set", pod_if, "up")
        _must("-n", ns, "link", "set", "lo", "up")
        env = {
            **os.environ,
            "NZ_METRICS_ADDR": "0.0.0.0",  # as the manifests set it
            # Envoy's listener on 0.0.0.0 as envoy.yaml has it, under `envoy run`
            "NZ_DEV_POD": "1",
        }
        cli = [str(_CLI)] if _CLI.exists() else [sys.executable, "-m", "neuronetz_gateway"]
        dev = ["dev", "--port", str(LISTENER), "--state-file", str(state_file)]
        with (work / "dev.log").open("wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cli, *dev],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def started() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"dev exited {proc.returncode}:\n{_tail(work / 'dev.log')}")
            return state_file.exists() and state_file.stat().st_size > 0

        poll(started, timeout_s=120, interval_s=0.2, what="the dev stack inside the namespace")
        yield Pod(ns, pod_ip, json.loads(state_file.read_text(encoding="utf-8")))
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the dev command stops what it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _kill_namespace(ns)
        _ip("netns", "del", ns)  # takes the veth pair with it
        _ip("link", "del", host_if)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    """``GET path`` as the kubelet's httpGet probe sends it (1 s timeout, its default)."""
    return probes.http_get(host, port, path, timeout_s=1.0)


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_probe_passes_on_the_pod_ip(pod: Pod, service: str) -> None:
    port = pod.port(f"{service}_metrics")
    # The stack is up (its dev command wrote the state file): ready without waiting.
    assert _get(pod.ip, port, "/readyz") == (200, "ready\n")
    assert _get(pod.ip, port, "/livez") == (200, "ok\n")


@pytest.mark.parametrize("service", SERVICES)
def test_every_services_metrics_are_scraped_on_the_pod_ip_with_their_histograms(
    pod: Pod, service: str
) -> None:
    """What Prometheus scrapes from another node: the RPC latency histogram of the service's
    own RPCs (the probes above answered from gRPC health, so it has samples) and build_info."""
    status, text = _get(pod.ip, pod.port(f"{service}_metrics"), "/metrics")
    assert status == 200
    assert "# TYPE neuronetz_rpc_seconds histogram" in text
    assert f'neuronetz_build_info{{service="{service}"' in text


def test_envoys_probe_passes_on_the_pod_ip(pod: Pod) -> None:
    port = pod.port("envoy_probe")  # neuronetz-gateway envoy run --probe-port
    assert _get(pod.ip, port, "/readyz")[0] == 200
    assert _get(pod.ip, port, "/livez")[0] == 200


def test_the_listener_is_reachable_on_the_pod_ip(pod: Pod) -> None:
    status, body = _get(pod.ip, LISTENER, "/api/tags")
    assert status == 401, body


@pytest.mark.parametrize("name", GRPC_PORTS)
def test_grpc_ports_are_not_reachable_from_outside(pod: Pod, name: str) -> None:
    assert _refused(pod.ip, pod.port(name))


def test_the_operator_console_is_not_reachable_from_outside(pod: Pod) -> None:
    assert _refused(pod.ip, pod.port(CONSOLE))


def test_envoy_admin_is_not_reachable_from_outside(pod: Pod) -> None:
    port = urlsplit(pod.state["envoy_admin"]).port
    assert port is not None
    assert _refused(pod.ip, port)


@pytest.mark.parametrize("name", LOCAL_ONLY)
def test_the_stacks_own_servers_are_not_reachable_from_outside(pod: Pod, name: str) -> None:
    assert _refused(pod.ip, pod.port(name))


def test_the_probed_ports_do_answer_inside(pod: Pod) -> None:
    """The refusals above are the bind address, not a dead server: inside the namespace the
    same gRPC ports and the console take connections."""
    ports = [str(pod.port(name)) for name in (*GRPC_PORTS, CONSOLE)]
    script = (
        "import socket, sys\n"
        "for p in sys.argv[1:]:\n"
        "    socket.create_connection(('127.0.0.1', int(p)), timeout=2).close()\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", pod.ns, sys.executable, "-c", script, *ports],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
