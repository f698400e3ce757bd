"""The screenshots of docs/img/, taken from a real local stack (its own PostgreSQL, Redis,
mock Ollama, services and Envoy) in headless Chromium (tests/browser.py). Run by
scripts/screenshots; each page is one function in SHOTS, which gets the running stack, a demo
key and the browser, and writes its PNG."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, ViewportSize

from devstack.client import StackClient
from devstack.stack import Stack, StackConfig
from tests.browser import chromium

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "img"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}


@dataclass(frozen=True)
class Scene:
    stack: Stack
    client: StackClient
    demo_key: str  # a key of the demo tenant (allow_all), made before the browser starts
    browser: Browser
    out_dir: Path


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"screenshots: not within {timeout_s} s: {what}")
        time.sleep(0.1)


def playground(scene: Scene) -> Path:
    """docs/img/playground.png: /playground with the demo key, a streamed chat finished."""
    context = scene.browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{scene.stack.listener}/playground")
        page.fill("#key", scene.demo_key)
        _wait(lambda: page.inner_text("#models-note").endswith("for this key"), 20, "the models")
        page.select_option("#model", "llama3.2:latest")
        body = {
            "model": "llama3.2:latest",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "stream": True,
            "options": {"num_predict": 48, "mock_frame_delay_ms": 20},
        }
        page.fill("#body", json.dumps(body, indent=2))
        page.click("#run")
        _wait(lambda: " ms" in page.inner_text("#status"), 60, "the streamed chat")
        out = scene.out_dir / "playground.png"
        page.screenshot(path=str(out), full_page=True)
        return out
    finally:
        context.close()


def _admin(scene: Scene, method: str, **body: object) -> object:
    """One admin API call, as the console and the CLI make them (gRPC: no event loop needed)."""
    from google.protobuf import json_format

    from gateway import admincli
    from protos.neuronetz.admin.v1 import admin_pb2 as pb

    request = json_format.ParseDict(body, getattr(pb, f"{method}Request")())
    address = f"127.0.0.1:{scene.stack.ports['admin']}"
    return admincli.call(address, scene.stack.admin_token, method, request)


def console(scene: Scene) -> Path:
    """docs/img/console.png: the operator console on the demo tenant after a minute of real
    traffic through Envoy (bursts 10 s apart, so the chart over time has several columns),
    grouped by model over a custom window around it; a daily budget and a second key."""
    import httpx  # the test extra's

    _admin(scene, "SetBudget", tenant="demo", period="PERIOD_DAILY", tokens=20000)
    ci = _admin(scene, "CreateKey", tenant="demo", name="ci-nightly")
    old = _admin(scene, "CreateKey", tenant="demo", name="laptop-2024")
    _admin(scene, "RevokeKey", key=old.key.prefix, reason="rotated")  # type: ignore[attr-defined]
    keys = [scene.demo_key, ci.full_key]  # type: ignore[attr-defined]
    started = time.time()
    models = ["llama3.2:latest", "qwen2.5:0.5b", "llama3.2:latest"]
    for burst in range(6):
        for i in range(2 + burst % 3):
            body = {
                "model": models[(burst + i) % 3],
                "messages": [{"role": "user", "content": "Tell me about the sea." * (1 + i)}],
                "stream": False,
                "options": {"num_predict": 40 + 25 * ((burst * 3 + i) % 4)},
            }
            auth = {"Authorization": f"Bearer {keys[(burst + i) % 2]}"}
            httpx.post(f"{scene.stack.listener}/api/chat", json=body, headers=auth, timeout=30)
        if burst == 3:  # one refused request: a model the gateway does not serve
            body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
            httpx.post(f"{scene.stack.listener}/api/chat", json=body, headers=auth, timeout=30)
        time.sleep(10)
    minute = 60 * int(started // 60)
    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(minute))
    end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(60 * (int(time.time() // 60) + 1)))
    context = scene.browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(scene.stack.console_url)
        page.fill("#token", scene.stack.admin_token)
        page.click("#connect")
        page.wait_for_selector("#conn.on")
        page.select_option("#tenant", "demo")
        page.select_option("#dimension", "MODEL")
        page.select_option("#window", "custom")
        page.fill("#from", start)
        page.fill("#to", end)
        page.dispatch_event("#to", "change")
        page.wait_for_selector(
            f'#usage[data-state="ready"][data-tenant="demo"][data-end="{end}:00.000Z"]',
            timeout=60_000,
        )
        page.locator("#to").blur()
        out = scene.out_dir / "console.png"
        page.screenshot(path=str(out), full_page=True)
        return out
    finally:
        context.close()


# One entry per page in docs/img/ (the operator console's goes here too).
SHOTS: dict[str, Callable[[Scene], Path]] = {
    "playground": playground,
    "console": console,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(SHOTS), help="just these")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="default: docs/img")
    args = parser.parse_args(argv)
    names = args.only or list(SHOTS)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(StackConfig(playground=True)).start()
    try:
        client = StackClient(stack)
        tenant_id, _ = client.tenant("demo", allow_all=True)
        demo_key = client.key(tenant_id, name="demo").full_key
        with chromium() as browser:
            scene = Scene(stack, client, demo_key, browser, args.out_dir)
            for name in names:
                print(f"wrote {SHOTS[name](scene)}", flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
