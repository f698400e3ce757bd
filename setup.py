"""Build hook: compile ``protos/**/*.proto`` (the admin API) with grpcio-tools.

The generated ``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi`` are never committed (protobuf's
gencode says so: it must match the runtime it runs on). They are written at build time instead:
into the wheel for ``pip install .`` / ``pip wheel .``, and beside the ``.proto`` for an
editable install (``pip install -e .``, which ``scripts/dev`` and ``scripts/test`` run). So every
way of installing the package yields the stubs, and grpcio-tools is needed only to build
(``[build-system].requires``), never at run time. After editing a ``.proto``, reinstall.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent


def compile_protos(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted((SOURCE / "protos").rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{SOURCE}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(SOURCE)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(map(str, protos)))


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()  # first: a checkout's in-tree stubs must not overwrite the fresh ones
        compile_protos(SOURCE if self.editable_mode else Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithProtos})
