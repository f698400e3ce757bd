"""A service run as several workers (NZ_WORKERS=2, gateway/workers.py): the supervisor serves
the metrics port, and its ``/readyz`` is the workers' gRPC health as a new connection to the
service's port gets it — not a flag of its own that stays 200 while no worker answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version

import psutil
import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from tests import probes
from tests.polling import poll


@dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    metrics_port: int

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def get(self, path: str) -> tuple[int, str]:
        try:
            return probes.http_get("127.0.0.1", self.metrics_port, path)
        except OSError as exc:  # not listening yet
            return 0, type(exc).__name__


@pytest.fixture
def ratelimit(stack: Stack) -> Iterator[Supervised]:
    metrics_port = free_port()
    env = {
        **os.environ,
        "NZ_WORKERS": "2",
        "NZ_RATELIMIT_LISTEN": f"127.0.0.1:{free_port()}",
        "NZ_METRICS_PORT": str(metrics_port),
        # The stack's Redis (or Redis Cluster): ready only while it answers (gateway/readiness.py)
        **{k: v for k, v in stack.service_env().items() if k.startswith("NZ_REDIS")},
        "NZ_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuronetz_gateway", "ratelimit"],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield Supervised(proc, metrics_port)
    finally:
        for worker in psutil.Process(proc.pid).children() if proc.poll() is None else []:
            worker.resume()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_readyz_is_the_workers_grpc_health(ratelimit: Supervised) -> None:
    assert poll(lambda: ratelimit.get("/readyz") == (200, "ready\n"), timeout_s=30)
    assert ratelimit.get("/livez") == (200, "ok\n")
    # the workers' metrics, merged: one series each, whatever the number of workers
    status, text = ratelimit.get("/metrics")
    assert status == 200
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert [s for s in samples if s.startswith("neuronetz_build_info")] == [
        f'neuronetz_build_info{{service="ratelimit",version="{version("neuronetz-gateway")}"}} 1.0'
    ]
    # min over the workers: 1 once each has probed Redis (/readyz asked one of them)
    up = 'neuronetz_dependency_up{dependency="redis"} 1.0'
    poll(lambda: up in ratelimit.get("/metrics")[1].splitlines(), timeout_s=10, what=up)
    workers = ratelimit.workers()
    assert len(workers) == 2
    for worker in workers:  # no worker answers its gRPC health any more
        worker.suspend()
    assert ratelimit.get("/readyz") == (503, "not ready\n")
    assert ratelimit.get("/livez") == (200, "ok\n")  # the process itself still serves
    for worker in workers:
        worker.resume()
    assert poll(lambda: ratelimit.get("/readyz") == (200, "ready\n"), timeout_s=10)
    ratelimit.proc.send_signal(signal.SIGTERM)
    assert ratelimit.proc.wait(15) == 0
