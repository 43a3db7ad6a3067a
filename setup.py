"""Build hook: generate the gRPC/protobuf stubs from protos/ at install time.

The stubs (with .pyi types from mypy-protobuf) are written into libs/interlock/<svc>/v1/
and are never committed; `make install` and any `pip install` of this project make them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py")], check=True)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


def find_packages() -> dict[str, str]:
    """Map every package to its folder: libs/interlock -> interlock, services -> interlock.services."""
    mapping: dict[str, str] = {}
    for prefix, base in (("interlock", ROOT / "libs" / "interlock"), ("interlock.services", ROOT / "services")):
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            name = prefix if str(rel) == "." else prefix + "." + ".".join(rel.parts)
            mapping[name] = os.path.relpath(init.parent, ROOT)
    return mapping


if not (ROOT / "libs" / "interlock" / "router" / "v1" / "router_pb2.py").exists():
    generate_stubs()
PACKAGES = find_packages()
setup(
    packages=sorted(PACKAGES),
    package_dir=PACKAGES,
    # Migration SQL files ship with trace-ingest: it applies them at start.
    package_data={"interlock": ["py.typed", "**/*.pyi"], "interlock.services.traceingest": ["migrations/*.sql"]},
    cmdclass={"build_py": BuildPyWithStubs},
)
