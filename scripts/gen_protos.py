"""Generate Python protobuf + gRPC stubs (with .pyi types) from protos/ into libs/.

Run by `make install` and by the setup.py build hook; the output is git-ignored.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "libs"


def main() -> int:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if not files:
        print("gen_protos: no .proto files under protos/", file=sys.stderr)
        return 1
    # Drop stale output so a removed proto leaves no module behind.
    for proto in files:
        pkg_dir = OUT / Path(proto).parent
        if pkg_dir.exists():
            for stale in pkg_dir.glob("*_pb2*"):
                stale.unlink()
    well_known = str(resources.files("grpc_tools") / "_proto")
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
    ]
    if plugin:
        grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
        args += [f"--plugin=protoc-gen-mypy={plugin}", f"--mypy_out={OUT}"]
        if grpc_plugin:
            args += [f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}", f"--mypy_grpc_out={OUT}"]
    else:
        args += [f"--pyi_out={OUT}"]
    rc = int(protoc.main([*args, *files]))
    if rc != 0:
        print(f"gen_protos: protoc failed with {rc}", file=sys.stderr)
        return rc
    # Every generated folder is a regular package inside `interlock`.
    for proto in files:
        d = OUT / Path(proto).parent
        while d != OUT / "interlock":
            (d / "__init__.py").touch()
            d = d.parent
    print(f"gen_protos: generated stubs for {len(files)} protos into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
