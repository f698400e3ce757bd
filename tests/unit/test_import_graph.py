"""Who may import whom, read from the source (every import statement, those inside functions
too): the services share only the package ``gateway``, ``gateway`` imports no application, and
the top-level packages form no cycle. Each failure names the file, the line and the import."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("authz", "ratelimit", "accounting")
SHARED = "gateway"
CLI = "neuronetz_gateway"  # the command line: the one package that may import every other
PACKAGES = (*SERVICES, SHARED, "devstack", CLI, "bench", "protos", "tests")


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # top-level package of the importing file
    target: str  # top-level package imported
    where: str  # file:line
    statement: str

    def __str__(self) -> str:
        return f"{self.where}: {self.statement}"


def _modules(root: Path, package: str) -> Iterator[Path]:
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name.split(".")[0]
    elif node.level > 0:
        yield package  # a relative import stays inside its package
    elif node.module is not None:
        yield node.module.split(".")[0]


def edges_of(package: str, root: Path = ROOT) -> list[Edge]:
    found: list[Edge] = []
    for path in _modules(root, package):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, package):
                if target in PACKAGES and target != package:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    statement = ast.get_source_segment(source, node) or ast.dump(node)
                    found.append(Edge(package, target, where, statement))
    return found


def graph() -> list[Edge]:
    return [edge for package in PACKAGES for edge in edges_of(package)]


def _offending(edges: list[Edge]) -> str:
    return "\n".join(str(edge) for edge in edges)


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """What the rules below rely on: a lazy import inside a function counts, so do ``import
    a.b`` and ``from a.b import c``; a relative import stays inside its package."""
    (tmp_path / "gateway" / "sub").mkdir(parents=True)
    (tmp_path / "gateway" / "sub" / "cli.py").write_text(
        "import os\n"
        "import authz.keys\n"
        "from . import logs\n"
        "from ratelimit.windows import Window\n"
        "def dev() -> None:\n"
        "    from devstack.dev import run_dev\n",
        encoding="utf-8",
    )
    found = {(e.target, str(e)) for e in edges_of("gateway", tmp_path)}
    assert found == {
        ("authz", "gateway/sub/cli.py:2: import authz.keys"),
        ("ratelimit", "gateway/sub/cli.py:4: from ratelimit.windows import Window"),
        ("devstack", "gateway/sub/cli.py:6: from devstack.dev import run_dev"),
    }


def test_no_service_imports_another() -> None:
    crossing = [e for e in graph() if e.source in SERVICES and e.target in SERVICES]
    assert not crossing, "a service imports another (share it through gateway):\n" + _offending(
        crossing
    )


def test_the_shared_package_imports_no_application() -> None:
    forbidden = {*SERVICES, "devstack", CLI, "bench", "tests"}
    upward = [e for e in edges_of(SHARED) if e.target in forbidden]
    assert not upward, "gateway imports an application:\n" + _offending(upward)


def test_benches_and_services_never_import_the_tests() -> None:
    into_tests = [e for e in graph() if e.source in (*SERVICES, "bench") and e.target == "tests"]
    assert not into_tests, "imports the tests:\n" + _offending(into_tests)


def _shortest_cycle(edges: list[Edge]) -> list[str]:
    """The shortest chain of packages that leads back to its start, [] when there is none."""
    targets: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for edge in edges:
        targets[edge.source].add(edge.target)
    best: list[str] = []
    for start in PACKAGES:
        paths = {start: [start]}
        frontier = [start]
        found: list[str] = []
        while frontier and not found:  # breadth first: the first way back is a shortest
            step: list[str] = []
            for package in frontier:
                for target in sorted(targets[package]):
                    if target == start:
                        found = [*paths[package], start]
                        break
                    if target not in paths:
                        paths[target] = [*paths[package], target]
                        step.append(target)
                if found:
                    break
            frontier = step
        if found and (not best or len(found) < len(best)):
            best = found
    return best


def test_the_top_level_packages_form_no_cycle() -> None:
    edges = graph()
    cycle = _shortest_cycle(edges)
    hops = set(itertools.pairwise(cycle))
    on_it = [e for e in edges if (e.source, e.target) in hops]
    assert not cycle, f"import cycle {' -> '.join(cycle)}:\n" + _offending(on_it)
