"""The static rate-limit YAML reloads while the RLS runs (ratelimit/config.py, Reloader): a
changed file's rules replace the old ones in the config the Decider holds; a bad new file keeps
the old rules and says why; each reload is counted by result."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.rls import Limit, Unit
from ratelimit import config

RULES = """
domains:
  - domain: gateway
    descriptors:
      - key: model
        rate_limit: {{unit: MINUTE, requests_per_unit: {n}}}
"""
MODEL = (("model", "llama3"),)


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("ratelimit_config_reloads_total", {"result": result}) or 0.0


def write(path: Path, text: str, bump_s: int = 0) -> None:
    path.write_text(text, encoding="utf-8")
    if bump_s:  # a later mtime even on a coarse clock
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_s * 1_000_000_000))


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    write(path, RULES.format(n=10))
    return path


def test_a_changed_file_replaces_the_rules_in_place(file: Path) -> None:
    static = config.load(file)
    reloader = config.Reloader(static, file)
    assert static.match("gateway", MODEL).limit == Limit(10, Unit.MINUTE)
    assert not reloader.changed()
    ok_before = reloads("ok")
    write(file, RULES.format(n=20), bump_s=1)
    assert reloader.changed()
    assert reloader.reload("changed")
    assert static.match("gateway", MODEL).limit == Limit(20, Unit.MINUTE)  # the same object
    assert not reloader.changed()
    assert reloads("ok") == ok_before + 1


def test_a_bad_new_file_keeps_the_old_rules(file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    static = config.load(file)
    reloader = config.Reloader(static, file)
    errors_before = reloads("error")
    write(file, "domains: [{domain: gateway, descriptors: [{key: model, rate_limit: {}}]}]", 1)
    assert not reloader.reload("sighup")
    assert static.match("gateway", MODEL).limit == Limit(10, Unit.MINUTE)
    assert reloads("error") == errors_before + 1
    logged = capsys.readouterr()
    assert "the old rules stay" in logged.out + logged.err
    assert "rate_limit" in logged.out + logged.err
    assert not reloader.changed()  # the bad file is not retried until it changes again


def test_a_vanished_file_is_no_change(file: Path) -> None:
    reloader = config.Reloader(config.load(file), file)
    file.unlink()
    assert not reloader.changed()


async def test_watch_picks_up_a_change(file: Path) -> None:
    static = config.load(file)
    watch = asyncio.create_task(config.Reloader(static, file).watch(0.05))
    try:
        write(file, RULES.format(n=30), bump_s=1)
        for _ in range(100):
            if static.match("gateway", MODEL).limit == Limit(30, Unit.MINUTE):
                break
            await asyncio.sleep(0.02)
        assert static.match("gateway", MODEL).limit == Limit(30, Unit.MINUTE)
    finally:
        watch.cancel()
