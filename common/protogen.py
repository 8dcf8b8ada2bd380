"""Generate the gRPC stubs from `proto/` into the gitignored `relaywire/` package.

One script used everywhere (CI, Dockerfiles, tests, `common.wire` at import time). The generated
package records the sha256 of the .proto files it came from, so stale stubs are regenerated
instead of drifting. Run by hand: `python -m common.protogen`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT
PACKAGE = "relaywire"
STAMP = ROOT / PACKAGE / ".proto-sha256"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def proto_digest() -> str:
    digest = hashlib.sha256()
    for path in proto_files():
        digest.update(path.relative_to(PROTO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current() -> bool:
    return STAMP.is_file() and STAMP.read_text().strip() == proto_digest()


def generate() -> None:
    from grpc_tools import protoc  # imported here: only needed when stubs are (re)built

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    import grpc_tools

    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {files}")
    # protoc writes modules, not packages: add the __init__ files for the package path.
    for directory in {(OUT_ROOT / f).parent for f in files}:
        while directory != OUT_ROOT:
            (directory / "__init__.py").touch()
            directory = directory.parent
    STAMP.write_text(proto_digest() + "\n")


def ensure_current() -> None:
    if not is_current():
        generate()


if __name__ == "__main__":
    generate()
    print(f"generated {PACKAGE}/ from {len(proto_files())} proto file(s)", file=sys.stderr)
