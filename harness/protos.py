"""Generate the gRPC code (client/fastai_serving_protos/*_pb2*.py) from the .proto files: `make protos`.

TF Serving's API (tensorflow_*.proto) and the Open Inference Protocol's (open_inference.proto).

The .proto files are the single source; the generated modules are committed, so the serving
environment, the images and the batch client need no code generator, and tests/test_grpc_protos.py
fails while they differ from what this pinned grpcio-tools (requirements-dev.txt) writes from them.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from harness import PROJECT_ROOT

SOURCE_ROOT = "client"  # relative to the project root: the folder the package (and the .proto imports) start from
PACKAGE = "fastai_serving_protos"  # the import path the .proto files use, and the generated modules' package
PROTO_FOLDER = f"{SOURCE_ROOT}/{PACKAGE}"
# The files that declare services (each gets a _pb2_grpc.py).
SERVICES = (f"{PACKAGE}/tensorflow_serving.proto", f"{PACKAGE}/open_inference.proto")


def proto_files(root: Path = PROJECT_ROOT) -> list[str]:
    return sorted(str(path.relative_to(root / SOURCE_ROOT)) for path in (root / PROTO_FOLDER).glob("*.proto"))


def generate(out_dir: Path, root: Path = PROJECT_ROOT) -> list[Path]:
    """Write the generated modules under `out_dir` (as `out_dir`/fastai_serving_protos/...); returns them."""
    from grpc_tools import protoc  # a development tool: requirements-dev.txt

    well_known = resources.files("grpc_tools").joinpath("_proto")  # google/protobuf/*.proto
    paths = ["grpc_tools.protoc", f"--proto_path={root / SOURCE_ROOT}", f"--proto_path={well_known}"]
    (out_dir / PACKAGE).mkdir(parents=True, exist_ok=True)
    for arguments in ([f"--python_out={out_dir}", *proto_files(root)], [f"--grpc_python_out={out_dir}", *SERVICES]):
        if protoc.main(paths + arguments) != 0:
            raise RuntimeError(f"protoc failed on {' '.join(arguments[1:])}")
    return sorted((out_dir / PACKAGE).glob("*_pb2*.py"))


def main() -> int:
    written = generate(PROJECT_ROOT / SOURCE_ROOT)
    print("protos: wrote " + ", ".join(str(path.relative_to(PROJECT_ROOT)) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
