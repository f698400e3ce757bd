"""One service, N worker processes on one port: all of the machine's cores for Python.

``neuronetz-gateway authz`` with ``NZ_WORKERS=N`` (N > 1) starts N copies of itself, each a
complete service (``NZ_WORKER_INDEX`` = 0…N-1) binding the same gRPC ports with
``SO_REUSEPORT``: the kernel spreads Envoy's connections over them. What a worker caches is
kept correct the way it already is for several replicas (revocations over LISTEN/NOTIFY, the
RLS's refusals over pub/sub, every counter in Redis). This parent process only supervises:

* it serves the workers' metrics as one Prometheus endpoint (``prometheus_client``'s
  multiprocess mode: counters summed over the workers), with ``/livez`` and ``/readyz``
  (gateway/metrics.py). It has no gRPC server of its own, so ``/readyz`` asks the gRPC health
  of the service's port on loopback, a new connection each time: the answer of whichever
  worker the kernel gives that connection to, as Envoy's next connection would get it (a
  worker that dies stops the whole set anyway); 503 from the moment a signal arrives;
* SIGTERM/SIGINT go to every worker, which drain as one process would;
* when a worker exits, the others are stopped and the parent exits with its status — the
  container's restart policy brings the whole set back, never a silently smaller one.

``NZ_WORKERS`` defaults to the CPUs this process may use (a cgroup's CPU limit when there is
one, else the CPUs it is allowed to run on).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway import logs

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_MAX_DEFAULT = 8
# /readyz's question to a worker: under the kubelet's default probe timeout (1 s)
_HEALTH_TIMEOUT_S = 0.5


def machine_cpus() -> int:
    """The CPUs this process may use: its cgroup's CPU limit (rounded up), else the CPUs it
    may run on; at most :data:`_MAX_DEFAULT`."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(cpus, _MAX_DEFAULT))


def grpc_serving(target: str, timeout_s: float = _HEALTH_TIMEOUT_S) -> bool:
    """The gRPC health (service "") at ``target`` is SERVING, asked on a new connection."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def supervise(service: str, command: Sequence[str], workers: int, metrics_port: int) -> int:
    """Run ``workers`` copies of ``command`` (the CLI's, running ``service``) until a signal or
    the first to exit."""
    from prometheus_client import CollectorRegistry, multiprocess

    from gateway import metrics
    from gateway.settings import load_settings, reach

    log = logs.get(service)
    cfg = load_settings()
    target = reach("", getattr(cfg, f"{service}_listen"))
    with tempfile.TemporaryDirectory(prefix=f"nz-{service}-metrics-") as metrics_dir:
        stopping = False
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        probes = metrics.serve(  # first: a port already taken starts no worker
            metrics_port,
            cfg.metrics_addr,
            lambda: not stopping and grpc_serving(target),
            registry=registry,
        )
        env = {**os.environ, "NZ_METRICS_PORT": "0", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        argv = list(command)
        procs = [
            subprocess.Popen(argv, env={**env, "NZ_WORKER_INDEX": str(i)}) for i in range(workers)
        ]

        def stop(signum: int, _frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signum)

        def forward(signum: int, _frame: FrameType | None) -> None:
            for proc in procs:  # SIGHUP: each worker reloads (ratelimit's YAML), none stops
                if proc.poll() is None:
                    proc.send_signal(signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, forward)
        log.info("workers started", workers=workers)
        failed = 0  # the status of a worker that exited on its own
        while any(proc.poll() is None for proc in procs):
            ended = [proc for proc in procs if proc.poll() is not None]
            if ended and not stopping:
                failed = ended[0].returncode or 1
                log.error("a worker exited: stopping the others", status=ended[0].returncode)
                stop(signal.SIGTERM, None)
            time.sleep(0.1)
        probes.close()
        for proc in procs:
            multiprocess.mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
        return failed or max(proc.returncode or 0 for proc in procs)
