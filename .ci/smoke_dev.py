"""Smoke test of the README's first command, as a newcomer runs it on a fresh clone.

Runs ``scripts/dev --port 0 --state-file …``, waits for its banner, streams one chat with the
printed demo key through the official ``ollama`` client, runs the banner's "Try it" lines as
pasted into a shell, then sends SIGINT (Ctrl-C) and checks that every process it started is
gone. Run by ``.ci/run`` with a Python that has ``ollama`` installed; exits non-zero on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import ollama

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 900  # a fresh clone installs the whole stack first
STOP_TIMEOUT_S = 30


def fail(message: str, log: Path | None = None) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log else ""
    sys.exit(f"smoke: FAILED: {message}\n{tail}")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children start their own sessions: walk ppids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nz-smoke-"))
    state_file, log = work / "state.json", work / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [str(ROOT / "scripts" / "dev"), "--port", "0", "--state-file", str(state_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (state_file.exists() and "Ctrl-C stops" in log.read_text(errors="replace")):
        if dev.poll() is not None:
            fail(f"scripts/dev exited with {dev.returncode} before its banner", log)
        if time.monotonic() > deadline:
            dev.kill()
            fail(f"no banner within {START_TIMEOUT_S}s", log)
        time.sleep(0.5)
    state = json.loads(state_file.read_text())
    started = descendants(dev.pid)
    if not set(state["pids"].values()) <= started:
        fail(f"state file pids {state['pids']} are not children of scripts/dev", log)
    try:
        chat(state)
        pages(state)
        paste_try_it(log.read_text(), work)
    except Exception as exc:  # any failure fails the smoke test, with the log
        dev.send_signal(signal.SIGINT)
        dev.wait(STOP_TIMEOUT_S)
        fail(repr(exc), log)
    dev.send_signal(signal.SIGINT)
    try:
        code = dev.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        dev.kill()
        fail(f"scripts/dev did not stop within {STOP_TIMEOUT_S}s of SIGINT", log)
    left = sorted(pid for pid in started if alive(pid))
    if left:
        fail(f"processes left after Ctrl-C: {left}", log)
    if code != 0:
        fail(f"scripts/dev exited with {code} after SIGINT", log)
    print(f"smoke: scripts/dev OK ({len(started)} processes started and stopped)")


def chat(state: dict[str, object]) -> None:
    headers = {"Authorization": f"Bearer {state['demo_key']}"}
    client = ollama.Client(host=str(state["listener"]), headers=headers)
    parts = list(
        client.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": "hello from the smoke test"}],
            stream=True,
        )
    )
    text = "".join(p.message.content or "" for p in parts)
    if not parts or parts[-1].done is not True or not parts[-1].eval_count or not text:
        raise AssertionError(f"not a whole streamed answer: {parts[-1:]}")
    print(f"smoke: streamed chat OK ({len(parts)} frames, {parts[-1].eval_count} tokens)")


def pages(state: dict[str, object]) -> None:
    """The banner's playground (Envoy's, on the public listener) and operator console (authz's,
    on loopback) answer with their pages and their Content-Security-Policy."""
    for name in ("playground", "console"):
        with urllib.request.urlopen(str(state[name]), timeout=10) as resp:  # noqa: S310
            body = resp.read().decode()
            csp = resp.headers.get("content-security-policy", "")
            kind = resp.headers.get("content-type", "")
        if (
            resp.status != 200
            or not kind.startswith("text/html")
            or "default-src 'none'" not in csp
        ):
            raise AssertionError(f"{name}: {resp.status} {kind!r} csp={csp!r}")
        if "<html" not in body.lower():
            raise AssertionError(f"{name}: not a page: {body[:200]!r}")
    print("smoke: the playground and the console answer with their pages")


def paste_try_it(banner: str, work: Path) -> None:
    """The banner's "Try it" block, run as pasted into bash, in another directory."""
    block = banner.split("Try it:", 1)[1].split("Ctrl-C stops", 1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NZ_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # not the checkout's .venv: full paths only
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    expected = ['"done":true', "HTTP/1.1 401", "HTTP/1.1 403", '"keys"', '"rows"']
    missing = [e for e in expected if e not in out]
    if result.returncode != 0 or missing:
        raise AssertionError(
            f"pasted banner lines: exit {result.returncode}, missing {missing}\n"
            f"{out[-3000:]}\n{result.stderr[-2000:]}"
        )
    print("smoke: the banner's lines work when pasted")


if __name__ == "__main__":
    main()
