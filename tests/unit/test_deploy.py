"""compose.yaml and deploy/kubernetes/ (the production overlay as ``kubectl kustomize``
renders it) run the same images with the same commands, every command is one the CLI has, and
migrations run once per rollout (a one-shot service / a Job), never in every pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from neuronetz_gateway.cli import build_parser
from neuronetz_gateway.envoyrun import DRAIN_TIMEOUT_S
from tests.kustomize import NEEDS_KUBECTL, containers, render

ROOT = Path(__file__).resolve().parents[2]
# What the rendered production overlay runs, by container: image (its tag is the overlay's)
# and arguments (the images' ENTRYPOINT is `neuronetz-gateway`).
KUBERNETES = {
    "migrate": ("neuronetz/authz", ["migrate"]),
    "authz": ("neuronetz/authz", ["authz"]),
    "ratelimit": ("neuronetz/authz", ["ratelimit"]),
    "accounting": ("neuronetz/accounting", ["accounting"]),
    "envoy-check": (
        "neuronetz/authz",
        ["envoy", "check", "--no-validate", "/etc/envoy/envoy.yaml"],
    ),
    "envoy": (
        "neuronetz/envoy",
        ["envoy", "run", "--probe-port", "9100", "--", "-c", "/etc/envoy/envoy.yaml"],
    ),
}


def _compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return services


def _kubernetes() -> list[dict[str, Any]]:
    return render("production")


def _repository(image: str) -> str:
    return image.rpartition(":")[0] if ":" in image.rpartition("/")[2] else image


def _ours_in_compose() -> dict[str, tuple[str, list[str]]]:
    return {
        name: (service["image"], service["command"])
        for name, service in _compose().items()
        if service.get("image", "").startswith("neuronetz/")
    }


def _ours_in_kubernetes() -> dict[str, tuple[str, list[str]]]:
    return {
        container["name"]: (_repository(container["image"]), container["args"])
        for doc in _kubernetes()
        if doc["kind"] in ("Deployment", "Job")
        for container in containers(doc)
        if container["image"].startswith("neuronetz/")
    }


def test_compose_runs_our_images_with_these_commands() -> None:
    expected = {
        "migrate": ("neuronetz/authz:latest", ["migrate"]),
        "authz": ("neuronetz/authz:latest", ["authz"]),
        "ratelimit": ("neuronetz/authz:latest", ["ratelimit"]),
        "accounting": ("neuronetz/accounting:latest", ["accounting"]),
        "envoy-check": (
            "neuronetz/authz:latest",
            ["envoy", "check", "--no-validate", "/etc/envoy/envoy.yaml"],
        ),
        "envoy": (
            "neuronetz/envoy:latest",
            [
                *["envoy", "run", "--probe-port", "9100", "--", "-c", "/etc/envoy/envoy.yaml"],
                "--config-yaml",  # its admin on a Unix socket (tests/unit/test_envoyconf.py)
                "admin: {address: {pipe: {path: /tmp/envoy-admin.sock, mode: 384}}}",
            ],
        ),
    }
    assert _ours_in_compose() == expected


@NEEDS_KUBECTL
def test_compose_and_kubernetes_run_the_same_images_and_commands() -> None:
    kubernetes = _ours_in_kubernetes()
    assert kubernetes == KUBERNETES
    compose = {n: (_repository(i), c) for n, (i, c) in _ours_in_compose().items()}
    for name in compose.keys() & kubernetes.keys():
        if name == "envoy":  # compose adds Envoy arguments of its own (its admin socket)
            assert compose[name][0] == kubernetes[name][0]
            assert compose[name][1][:2] == kubernetes[name][1][:2] == ["envoy", "run"]
        else:
            assert compose[name] == kubernetes[name], name


def test_compose_builds_each_image_from_its_dockerfile() -> None:
    built = {
        service["image"]: service["build"]["dockerfile"]
        for service in _compose().values()
        if "build" in service
    }
    assert built == {
        "neuronetz/authz:latest": "Dockerfile.authz",
        "neuronetz/envoy:latest": "Dockerfile.envoy",
        "neuronetz/accounting:latest": "Dockerfile.accounting",
    }
    for dockerfile in built.values():
        assert (ROOT / dockerfile).is_file()


@pytest.mark.parametrize(
    "command",
    sorted({tuple(c) for _, c in [*_ours_in_compose().values(), *KUBERNETES.values()]}),
    ids=" ".join,
)
def test_every_command_is_one_the_cli_has(command: tuple[str, ...]) -> None:
    args = build_parser().parse_args(list(command))
    assert args.command == command[0]


def test_envoy_starts_only_after_the_config_guard_passed_in_compose() -> None:
    compose = _compose()
    condition = compose["envoy"]["depends_on"]["envoy-check"]["condition"]
    assert condition == "service_completed_successfully"
    assert compose["envoy-check"]["volumes"] == compose["envoy"]["volumes"]


@NEEDS_KUBECTL
def test_envoy_starts_only_after_the_config_guard_passed_in_kubernetes() -> None:
    (deployment,) = [d for d in _kubernetes() if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    first = spec["initContainers"][0]  # a plain init container: the pod waits for it
    assert first["name"] == "envoy-check"
    assert "restartPolicy" not in first
    (envoy,) = [c for c in spec["containers"] if c["name"] == "envoy"]
    config = {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True}
    assert first["volumeMounts"] == [config]  # the guard checks the file Envoy reads
    assert config in envoy["volumeMounts"]


@NEEDS_KUBECTL
def test_migrations_run_once_per_rollout_not_in_every_pod_in_kubernetes() -> None:
    docs = _kubernetes()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert all(c["args"] != ["migrate"] for c in containers(deployment))
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert [c["args"] for c in containers(job)] == [["migrate"]]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migrations_run_once_per_up_in_compose() -> None:
    compose = _compose()
    assert "restart" not in compose["migrate"]
    for name in ("authz", "accounting"):
        condition = compose[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"


def test_compose_stops_envoy_before_the_services_and_ollama() -> None:
    """compose stops a service before those it depends on: Envoy depends on the services and
    Ollama, so it drains first (docs/PLATFORM.md, "Draining"), as native sidecars stop after
    the main container. The namespace belongs to `pod`, so stopping Envoy keeps theirs."""
    compose = _compose()
    depends = compose["envoy"]["depends_on"]
    for name in ("authz", "ratelimit", "accounting"):
        assert depends[name] == {"condition": "service_healthy"}, name
    assert depends["ollama"] == {"condition": "service_started"}
    for name in ("envoy", "authz", "ratelimit", "accounting", "ollama"):
        assert compose[name]["network_mode"] == "service:pod", name
    assert "ports" not in compose["envoy"] and compose["pod"]["ports"] == ["8080:8080"]
    assert compose["pod"].get("depends_on") is None  # it starts first and stops last
    # compose kills Envoy stop_grace_period after SIGTERM: past its supervisor's drain timeout
    assert "--drain-timeout" not in compose["envoy"]["command"]  # its default
    assert compose["envoy"]["stop_grace_period"] == "900s"
    assert DRAIN_TIMEOUT_S == 870


def test_compose_stops_the_services_in_the_pods_sidecar_order() -> None:
    """authz before accounting (it admits inference only while accounting answers), accounting
    before ratelimit (its last tokens/min debits go there): the reverse of the start order."""
    compose = _compose()
    assert compose["authz"]["depends_on"]["accounting"] == {"condition": "service_healthy"}
    assert compose["accounting"]["depends_on"]["ratelimit"] == {"condition": "service_healthy"}
    assert "accounting" not in compose["ratelimit"].get("depends_on", [])
