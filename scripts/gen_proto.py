"""Regenerate the gRPC stubs of bloomz_api/proto (the one command: `make proto`).

`python scripts/gen_proto.py` writes next to the .proto; `--out DIR` writes into DIR instead, which
tests/test_proto_fresh.py uses to check that the committed stubs are not stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = ROOT / "api"
PROTOS = sorted((SOURCE_ROOT / "bloomz_api" / "proto").glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpc_tools) for every .proto; return the files written under out_root."""
    from grpc_tools import protoc  # imported here: only needed by developers and tests

    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "bloomz_api" / "proto").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{SOURCE_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(SOURCE_ROOT)) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "bloomz_api" / "proto").glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT, help="source root to write into")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
