"""Kill rate per module from mutmut's results (``mutants/**/*.py.meta``), for docs/TESTING.md.

A mutant counts as killed when the tests failed on it (or it timed out); as survived when they
passed, or when no test ran it at all. Mutants listed in ``tests/mutation_equivalent.txt`` (one
mutant name per line, ``#`` comments: why it is equivalent) are reported apart: a surviving
mutant the team judged equivalent does not count against the module.

Usage: .venv/bin/python scripts/mutation_report.py [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "tests" / "mutation_equivalent.txt"
GOAL = 0.90
# mutmut's exit codes per mutant (mutmut/stats.py): 1 and 3 a test failed; 36, ±24, 152 and 255
# the tests timed out (the mutant hangs); 37 caught by the type check. 0 survived, 5/33 no test
# ran it, anything else (skipped, suspicious, a crash) is not counted as a kill either.
_KILLED = {1, 3, 36, 24, -24, 152, 255, 37}


@dataclass
class Module:
    name: str
    killed: int = 0
    equivalent: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + len(self.equivalent) + len(self.survived)

    @property
    def rate(self) -> float:
        counted = self.total - len(self.equivalent)
        return self.killed / counted if counted else 1.0


def equivalents(path: Path = EQUIVALENT_FILE) -> set[str]:
    if not path.exists():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def collect(mutants: Path, judged: set[str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        module_path = meta.relative_to(mutants).with_suffix("").as_posix()
        module = modules.setdefault(module_path, Module(module_path))
        for name, code in data.get("exit_code_by_key", {}).items():
            if code in _KILLED:
                module.killed += 1
            elif name in judged:
                module.equivalent.append(name)
            else:
                module.survived.append(name)
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="a table for docs/TESTING.md")
    args = parser.parse_args(argv)
    mutants = ROOT / "mutants"
    if not mutants.is_dir():
        print("no mutants/ directory: run scripts/mutation first", file=sys.stderr)
        return 2
    modules = collect(mutants, equivalents())
    if args.markdown:
        print("| module | mutants | killed | equivalent | survived | raw | kill rate |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    for m in modules.values():
        if args.markdown:
            print(
                f"| `{m.name}` | {m.total} | {m.killed} | {len(m.equivalent)} "
                f"| {len(m.survived)} | {m.killed / m.total:.1%} | {m.rate:.1%} |"
            )
        else:
            print(f"{m.name:28} {m.total:5} mutants  {m.rate:6.1%} killed  ", end="")
            print(f"{len(m.equivalent)} equivalent, {len(m.survived)} survived")
    if not args.markdown:
        for m in modules.values():
            for name in m.survived:
                print(f"  survived: {name}")
    below = [m.name for m in modules.values() if m.rate < GOAL]
    if below:
        print(f"below {GOAL:.0%}: {', '.join(below)}", file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
