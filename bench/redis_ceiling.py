"""What one Redis node serves of the gateway's kind of load (bench/scaling.py, docs/SCALING.md).

``redis-benchmark`` (Debian's redis-tools; skipped when absent) against a ``redis-server`` of
the stack's (one node of a cluster: a shard), 50 clients, one benchmark thread:

* GET and SET, the plain-command reference;
* EVALSHA of the rate-limit script (ratelimit/window.lua) as the RLS calls it for a request:
  requests/min admitted on the key's and the tenant's window, tokens/min checked on both
  (4 keys: 4 HMGETs and up to 2 HSETs + 2 PEXPIREs inside), unpipelined as the services send
  most of their calls, and pipelined 16 deep (the node's ceiling when clients batch).

The benchmark client runs on the same cores as the server: on a 2-core machine the figures are
what one core of Redis does while the client has the other.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import redis

from devstack.processes import redis_server_bin

CLIENTS = 50
# (kind, mode) of the RLS's windows for one request (ratelimit/window.lua: limit, period_ms,
# hits, mode, enforce per key); limits high enough never to refuse.
_WINDOWS = (("rpm", "a"), ("rpm", "a"), ("tpm", "c"), ("tpm", "c"))


@dataclass
class RedisBenchRow:
    test: str
    pipeline: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float


def binary() -> str | None:
    beside = Path(redis_server_bin()).with_name("redis-benchmark")
    return str(beside) if beside.exists() else shutil.which("redis-benchmark")


def window_call(sha: str) -> list[str]:
    # redis-benchmark draws each __rand_int__ on its own: these keys share no hash tag, which a
    # single node does not mind.
    keys = [f"nz:bench:{{__rand_int__}}:{kind}:{i}" for i, (kind, _) in enumerate(_WINDOWS)]
    argv = [""]  # now: the server's clock
    for kind, mode in _WINDOWS:
        argv += ["1000000000" if kind == "rpm" else "100000000000", "60000", "1", mode, "1"]
    return ["evalsha", sha, str(len(keys)), *keys, *argv]


def run(node_url: str, requests: int) -> list[RedisBenchRow]:
    found = binary()
    if found is None:
        print("\nredis: no redis-benchmark (Debian: apt-get install redis-tools); skipped")
        return []
    parts = urlsplit(node_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    script = resources.files("ratelimit").joinpath("window.lua").read_text()
    sha = str(redis.Redis(host=host, port=port).script_load(script))
    runs: list[tuple[str, int, list[str]]] = [
        ("", 1, ["-t", "get,set"]),
        ("EVALSHA window.lua, 4 keys", 1, window_call(sha)),
        ("EVALSHA window.lua, 4 keys", 16, window_call(sha)),
    ]
    rows = []
    for name, pipeline, command in runs:
        argv = [found, "-h", host, "-p", str(port), "-n", str(requests), "-c", str(CLIENTS)]
        argv += ["-P", str(pipeline), "-r", "100000", "--csv", *command]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
        for rec in csv.DictReader(io.StringIO(out.stdout)):
            rows.append(
                RedisBenchRow(
                    name or rec["test"],
                    pipeline,
                    float(rec["rps"]),
                    float(rec["p50_latency_ms"]),
                    float(rec["p99_latency_ms"]),
                )
            )
    return rows


def report(rows: list[RedisBenchRow]) -> None:
    if not rows:
        return
    print(f"\nredis-benchmark, one node of the stack's ({CLIENTS} clients, one client thread)")
    print(f"{'test':<28} {'pipeline':>8} {'ops/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    for r in rows:
        print(f"{r.test:<28} {r.pipeline:>8} {r.ops_per_s:>9.0f} {r.p50_ms:>7.3f} {r.p99_ms:>7.3f}")
