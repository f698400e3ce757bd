"""compose.yaml and deploy/kubernetes/ run the same images with the same commands, every
command is one the CLI has, and migrations run once per rollout (a one-shot service / a Job),
never in every pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuronetz_gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return services


def _kubernetes() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _ours_in_compose() -> dict[str, tuple[str, list[str]]]:
    return {
        name: (service["image"], service["command"])
        for name, service in _compose().items()
        if service.get("image", "").startswith("neuronetz/")
    }


def _ours_in_kubernetes() -> dict[str, tuple[str, list[str]]]:
    return {
        container["name"]: (container["image"], container["args"])
        for doc in _kubernetes()
        if doc["kind"] in ("Deployment", "Job")
        for container in _pod_containers(doc)
        if container["image"].startswith("neuronetz/")
    }


def test_compose_and_kubernetes_run_the_same_images_and_commands() -> None:
    expected = {
        "migrate": ("neuronetz/authz:latest", ["migrate"]),
        "authz": ("neuronetz/authz:latest", ["authz"]),
        "ratelimit": ("neuronetz/authz:latest", ["ratelimit"]),
        "accounting": ("neuronetz/accounting:latest", ["accounting"]),
        "envoy-check": (
            "neuronetz/authz:latest",
            ["envoy", "check", "--no-validate", "/etc/envoy/envoy.yaml"],
        ),
    }
    assert _ours_in_compose() == expected
    assert _ours_in_kubernetes() == expected


def test_compose_builds_each_image_from_its_dockerfile() -> None:
    built = {
        service["image"]: service["build"]["dockerfile"]
        for service in _compose().values()
        if "build" in service
    }
    assert built == {
        "neuronetz/authz:latest": "Dockerfile.authz",
        "neuronetz/accounting:latest": "Dockerfile.accounting",
    }
    for dockerfile in built.values():
        assert (ROOT / dockerfile).is_file()


@pytest.mark.parametrize(
    "command", sorted({tuple(c) for _, c in _ours_in_compose().values()}), ids=" ".join
)
def test_every_command_is_one_the_cli_has(command: tuple[str, ...]) -> None:
    args = build_parser().parse_args(list(command))
    assert args.command == command[0]


def test_envoy_starts_only_after_the_config_guard_passed() -> None:
    compose = _compose()
    condition = compose["envoy"]["depends_on"]["envoy-check"]["condition"]
    assert condition == "service_completed_successfully"
    assert compose["envoy-check"]["volumes"] == compose["envoy"]["volumes"]
    (deployment,) = [d for d in _kubernetes() if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    first = spec["initContainers"][0]  # a plain init container: the pod waits for it
    assert first["name"] == "envoy-check"
    assert "restartPolicy" not in first
    (envoy,) = [c for c in spec["containers"] if c["name"] == "envoy"]
    assert first["volumeMounts"] == envoy["volumeMounts"]


def test_migrations_run_once_per_rollout_not_in_every_pod() -> None:
    docs = _kubernetes()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert all(c["args"] != ["migrate"] for c in _pod_containers(deployment))
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert [c["args"] for c in _pod_containers(job)] == [["migrate"]]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    compose = _compose()
    assert "restart" not in compose["migrate"]
    for name in ("authz", "accounting"):
        condition = compose[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
