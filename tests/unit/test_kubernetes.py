"""deploy/kubernetes as a cluster gets it: both overlays rendered with ``kubectl kustomize``,
valid for every supported Kubernetes (strict schemas), and the rendered pod carrying what
issue 14 asks of it — hardening, a Secret per container, probes where the kubelet stands,
the sidecar order, the drain budget, PDB/HPA/spread, one image tag, NetworkPolicies that
open only the listener and the probe/metrics ports, and a migrations Job with a lock bound."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.settings import Settings
from tests.kustomize import (
    KUBERNETES,
    NEEDS_KUBECTL,
    OVERLAYS,
    ROOT,
    Doc,
    build,
    containers,
    find,
    pod_spec,
    render,
)

pytestmark = NEEDS_KUBECTL

# Native sidecars (initContainers with restartPolicy: Always) are on by default from 1.29.
VERSIONS = [f"1.{minor}" for minor in range(29, 38)]
SERVICES = {"authz": 9101, "ratelimit": 9102, "accounting": 9103}
POD_LABELS = {
    "app.kubernetes.io/name": "neuronetz-gateway",
    "app.kubernetes.io/component": "gateway",
}
NAMESPACE = {"dev": "neuronetz-dev", "production": "neuronetz"}


def _gateway(overlay: str) -> Doc:
    return find(render(overlay), "Deployment", "neuronetz-gateway")


def _job(overlay: str) -> Doc:
    return find(render(overlay), "Job", "neuronetz-migrate")


def _by_name(doc: Doc) -> dict[str, Doc]:
    return {c["name"]: c for c in containers(doc)}


def _env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_for_every_supported_kubernetes(overlay: str, version: str) -> None:
    kinds = set()
    for doc in render(overlay):
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        kinds.add(doc["kind"])
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validation above is not vacuous: a misspelt field fails it."""
    deployment = _gateway("production")
    pod_spec(deployment)["terminationGracePeriod"] = 900
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened(overlay: str) -> None:
    for workload in (_gateway(overlay), _job(overlay)):
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(workload):
            name = container["name"]
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "privileged" not in context, name
            resources = container["resources"]
            assert set(resources["requests"]) == {"cpu", "memory"}, name
            assert "memory" in resources["limits"], name


def test_resources_are_sized_from_the_bench() -> None:
    """docs/PERFORMANCE.md / the bench's RSS after load, one worker each: authz ~94 MiB,
    accounting ~83 MiB, ratelimit ~77 MiB, Envoy ~85 MiB + its supervisor ~51 MiB. Requests
    cover that, limits leave room (argon2 hashes, buffered audit rows); Envoy's limit keeps
    the overload manager's 192 MiB heap at ~75 % of Envoy's share (256 Mi of 320 Mi)."""
    memory = {
        name: (c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"])
        for name, c in _by_name(_gateway("production")).items()
    }
    assert memory == {
        "envoy-check": ("64Mi", "128Mi"),
        "accounting": ("128Mi", "256Mi"),
        "ratelimit": ("96Mi", "192Mi"),
        "authz": ("128Mi", "256Mi"),
        "envoy": ("160Mi", "320Mi"),
    }
    heap = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())["overload_manager"]
    (fixed,) = [m for m in heap["resource_monitors"] if m["name"].endswith("fixed_heap")]
    assert fixed["typed_config"]["max_heap_size_bytes"] == 192 << 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processes_that_write_have_an_empty_dir(overlay: str) -> None:
    """A read-only root: /tmp (the workers' Prometheus multiprocess directory,
    gateway/workers.py) and accounting's spool directory are emptyDirs."""
    deployment = _gateway(overlay)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for name, container in _by_name(deployment).items():
        if name == "envoy-check":
            continue
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
    accounting = _by_name(deployment)["accounting"]
    spool = _env(accounting)["NZ_ACCOUNTING_SPOOL_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in accounting["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[spool]]


def _secrets(container: Doc, volumes: dict[str, Doc]) -> set[tuple[str, str]]:
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            refs |= {(secret["secretName"], item["key"]) for item in secret["items"]}
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_gets_only_the_secrets_it_reads(overlay: str) -> None:
    """authz: admin token + database + Redis; accounting: database + Redis; ratelimit:
    Redis only; Envoy and the config guard none; the Job the database. No envFrom of a
    Secret anywhere, and no Secret volume a container does not mount."""
    got = {}
    for workload in (_gateway(overlay), _job(overlay)):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in containers(workload):
            assert not any("secretRef" in e for e in container.get("envFrom", []))
            got[container["name"]] = _secrets(container, volumes)
    db, redis = ("neuronetz-database", "url"), ("neuronetz-redis", "url")
    admin = ("neuronetz-admin", "token")
    assert got == {
        "envoy-check": set(),
        "accounting": {db, redis},
        "ratelimit": {redis},
        "authz": {db, redis, admin},
        "envoy": set(),
        "migrate": {db},
    }
    authz = _by_name(_gateway(overlay))["authz"]
    token_dir = {m["name"]: m["mountPath"] for m in authz["volumeMounts"]}["admin-token"]
    assert _env(authz)["NZ_ADMIN_TOKEN_FILE"] == f"{token_dir}/token"
    assert "NZ_ADMIN_TOKEN" not in _env(authz)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_nz_variable_is_a_setting(overlay: str) -> None:
    """Unknown NZ_* variables are ignored (gateway/settings.py): a misspelt one would be a
    setting silently not applied."""
    known = {f"NZ_{field.upper()}" for field in Settings.model_fields} | {"NZ_ADMIN_TOKEN_FILE"}
    for workload in (_gateway(overlay), _job(overlay)):
        for container in containers(workload):
            names = set(_env(container))
            assert names - known == set(), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_reach_the_contract_ports_from_the_pod_ip(overlay: str) -> None:
    """docs/CONTRACTS.md (issue 14): httpGet /readyz and /livez on the metrics ports bound to
    0.0.0.0, Envoy's supervisor on 9100; no probe on a gRPC port, none with `host` (that is
    the node's address, not the pod's)."""
    by_name = _by_name(_gateway(overlay))
    expected = {**SERVICES, "envoy": 9100}
    for name, port in expected.items():
        container = by_name[name]
        for kind, path in (
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/livez"),
        ):
            assert container[kind]["httpGet"] == {"path": path, "port": port}, (name, kind)
        env = _env(container)
        assert env["NZ_METRICS_ADDR"] == "0.0.0.0", name
        if name != "envoy":
            assert env["NZ_METRICS_PORT"] == str(port), name
            assert env["NZ_WORKERS"] == "1", name  # no CPU limit: the default is the node's
        assert {p["containerPort"] for p in container["ports"]} <= {8080, port}, name
    assert by_name["envoy"]["args"] == [
        "envoy",
        "run",
        "--probe-port",
        "9100",
        "--",
        "-c",
        "/etc/envoy/envoy.yaml",
    ]
    # The gRPC and admin listeners keep their loopback defaults (127.0.0.1:9001-9004).
    for container in by_name.values():
        assert not [n for n in _env(container) if n.endswith("_LISTEN")], container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecars_start_before_envoy_and_stop_after_it(overlay: str) -> None:
    spec = pod_spec(_gateway(overlay))
    init = [(c["name"], c.get("restartPolicy")) for c in spec["initContainers"]]
    assert init == [
        ("envoy-check", None),  # a plain init container: the pod waits for it
        ("ratelimit", "Always"),
        ("accounting", "Always"),
        ("authz", "Always"),
    ]
    assert [c["name"] for c in spec["containers"]] == ["envoy"]
    # Envoy's drain (the supervisor's 870 s default: max_stream_duration 840 s + listener
    # drain + slack) fits in the grace period with room for the sidecars after it.
    assert spec["terminationGracePeriodSeconds"] == 900


@pytest.mark.parametrize(("overlay", "replicas"), [("dev", (1, 2)), ("production", (2, 10))])
def test_disruption_budget_autoscaler_and_spread(overlay: str, replicas: tuple[int, int]) -> None:
    docs = render(overlay)
    deployment = find(docs, "Deployment", "neuronetz-gateway")
    assert deployment["spec"]["template"]["metadata"]["labels"] == POD_LABELS
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": POD_LABELS}}
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "neuronetz-gateway",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == replicas
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert {(s["topologyKey"], s["whenUnsatisfiable"]) for s in spread} == {
        ("kubernetes.io/hostname", "DoNotSchedule"),
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
    }
    assert all(s["labelSelector"] == {"matchLabels": POD_LABELS} for s in spread)


def _images(docs: list[Doc]) -> set[str]:
    return {c["image"] for d in docs if d["kind"] in ("Deployment", "Job") for c in containers(d)}


@pytest.mark.parametrize(("overlay", "tag"), [("dev", "dev"), ("production", "0.1.0")])
def test_images_carry_the_overlay_tag(overlay: str, tag: str) -> None:
    assert _images(render(overlay)) == {
        f"neuronetz/authz:{tag}",
        f"neuronetz/accounting:{tag}",
        f"neuronetz/envoy:{tag}",
    }


def test_one_tag_overrides_every_image(tmp_path: Path) -> None:
    """A platform team's overlay on top of production moves every image to its tag."""
    production = KUBERNETES / "overlays" / "production"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(production, tmp_path)],  # kustomize: relative only
                "images": [
                    {"name": f"neuronetz/{name}", "newTag": "1.2.3"}
                    for name in ("authz", "accounting", "envoy")
                ],
            }
        )
    )
    assert _images(build(tmp_path)) == {
        "neuronetz/authz:1.2.3",
        "neuronetz/accounting:1.2.3",
        "neuronetz/envoy:1.2.3",
    }


def _opened(rules: list[Doc]) -> set[tuple[int, str]]:
    ports: set[tuple[int, str]] = set()
    for rule in rules:
        for port in rule["ports"]:
            ports |= {
                (p, port["protocol"])
                for p in range(port["port"], port.get("endPort", port["port"]) + 1)
            }
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_opens_only_the_listener_and_the_probe_ports(overlay: str) -> None:
    docs = render(overlay)
    policy = find(docs, "NetworkPolicy", "neuronetz-gateway")
    assert policy["spec"]["podSelector"] == {"matchLabels": POD_LABELS}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    listener, probes = policy["spec"]["ingress"]
    assert _opened([listener]) == {(8080, "TCP")}
    assert _opened([probes]) == {(p, "TCP") for p in (9100, 9101, 9102, 9103)}
    # probes/metrics only from a namespace by its name (set by the API server, unforgeable)
    assert probes["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert _opened(policy["spec"]["egress"]) == {
        (53, "UDP"),
        (53, "TCP"),
        (11434, "TCP"),
        (5432, "TCP"),
        (6379, "TCP"),
    }
    for rule in policy["spec"]["egress"]:
        assert all("namespaceSelector" in peer for peer in rule["to"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateway_pods_of_the_overlay_namespace_reach_ollama(overlay: str) -> None:
    """The old policy admitted any pod in any namespace carrying a label; now a peer must be
    in the gateway's namespace (by name) AND carry the gateway's pod labels."""
    docs = render(overlay)
    deployment = find(docs, "Deployment", "neuronetz-gateway")
    assert deployment["metadata"]["namespace"] == NAMESPACE[overlay]
    policy = find(docs, "NetworkPolicy", "ollama-from-neuronetz-gateway")
    assert policy["metadata"]["namespace"] == "models"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "ollama"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE[overlay]}
            },
            "podSelector": {"matchLabels": POD_LABELS},
        }
    ]
    assert _opened([rule]) == {(11434, "TCP")}


def test_dev_and_production_policies_for_ollama_do_not_overwrite_each_other() -> None:
    names = {find(render(o), "NetworkPolicy", "ollama-from")["metadata"]["name"] for o in OVERLAYS}
    assert len(names) == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_job_is_bounded(overlay: str) -> None:
    job = _job(overlay)
    spec = job["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 900
    assert pod_spec(job)["restartPolicy"] == "Never"
    (migrate,) = containers(job)
    assert migrate["args"] == ["migrate"]
    lock_timeout = float(_env(migrate)["NZ_MIGRATE_LOCK_TIMEOUT_S"])
    assert lock_timeout == 120.0
    assert lock_timeout < spec["activeDeadlineSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoy_and_rate_limit_configs_are_the_repository_files(overlay: str) -> None:
    """One copy of each file: the ConfigMaps hold envoy/envoy.yaml and ratelimit/limits.yaml
    byte for byte, mounted where Envoy's -c and NZ_RATELIMIT_CONFIG point."""
    docs = render(overlay)
    deployment = find(docs, "Deployment", "neuronetz-gateway")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    by_name = _by_name(deployment)

    def mounted(container: str, path: str) -> str:
        """The data of the ConfigMap file at ``path`` in ``container``."""
        for mount in by_name[container]["volumeMounts"]:
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix) and "configMap" in volumes[mount["name"]]:
                name = volumes[mount["name"]]["configMap"]["name"]
                config_map = find(docs, "ConfigMap", name)
                data: str = config_map["data"][path.removeprefix(prefix)]
                return data
        raise AssertionError(f"{path} is not a ConfigMap file in {container}")

    envoy_config = by_name["envoy"]["args"][-1]
    assert mounted("envoy", envoy_config) == (ROOT / "envoy" / "envoy.yaml").read_text()
    assert (
        mounted("envoy-check", by_name["envoy-check"]["args"][-1])
        == (ROOT / "envoy" / "envoy.yaml").read_text()
    )
    limits = _env(by_name["ratelimit"])["NZ_RATELIMIT_CONFIG"]
    assert mounted("ratelimit", limits) == (ROOT / "ratelimit" / "limits.yaml").read_text()
