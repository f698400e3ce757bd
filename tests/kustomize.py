"""The Kubernetes manifests as a cluster gets them: ``kubectl kustomize`` of an overlay under
``deploy/kubernetes/overlays``, parsed (tests/unit/test_kubernetes.py, test_deploy.py)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
KUBECTL = shutil.which("kubectl")
NEEDS_KUBECTL = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH: the manifests are rendered with `kubectl kustomize` "
    "(install kubectl ≥ 1.27 to run these tests)",
)

Doc = dict[str, Any]


def build(directory: Path) -> list[Doc]:
    """``kubectl kustomize directory``, one dict per resource."""
    assert KUBECTL is not None, "kubectl is not on PATH"
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def _rendered(overlay: str) -> tuple[Doc, ...]:
    return tuple(build(KUBERNETES / "overlays" / overlay))


def render(overlay: str) -> list[Doc]:
    """The overlay's resources (rendered once per test session; a fresh copy each call)."""
    return copy.deepcopy(list(_rendered(overlay)))


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one resource of ``kind`` (named ``name``, or a prefix of a generated name)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: Doc) -> list[Doc]:
    """Init containers (sidecars included) then containers of a workload's pod."""
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]
