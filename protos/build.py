"""Compile every ``protos/**/*.proto`` into Python modules beside it (grpcio-tools).

Run by ``scripts/test``, ``scripts/dev`` and the Dockerfiles: ``python -m protos.build``.
Generated files are not committed; they are rebuilt whenever a .proto is newer.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stale(proto: Path) -> bool:
    stem = proto.with_suffix("")
    outputs = [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2_grpc.py"), Path(f"{stem}_pb2.pyi")]
    return any(not o.exists() or o.stat().st_mtime < proto.stat().st_mtime for o in outputs)


def build(force: bool = False) -> list[Path]:
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    todo = [p for p in protos if force or stale(p)]
    if not todo:
        return []
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *(str(p.relative_to(ROOT)) for p in todo),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {p.parent for p in todo}:
        for parent in [package_dir, *package_dir.parents]:
            if parent == ROOT:
                break
            (parent / "__init__.py").touch(exist_ok=True)
    return todo


if __name__ == "__main__":
    built = build(force="--force" in sys.argv)
    print("protos: " + (", ".join(str(p.relative_to(ROOT)) for p in built) or "up to date"))
