"""Regenerate the committed gRPC/protobuf stubs in kfaar_pb/ from proto/.

Run: python scripts/gen_protos.py [--out DIR]   (DIR defaults to the repository root)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
log = logging.getLogger("gen_protos")


def proto_files() -> list[Path]:
    """Return every .proto file under proto/, sorted."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into ``out``."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    written = sorted(out.glob("kfaar_pb/**/*_pb2*.py*"))
    for package in {p.parent for p in written} | {out / "kfaar_pb"}:
        (package / "__init__.py").touch()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO, help="output root")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(args.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
