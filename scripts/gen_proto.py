"""Regenerate kato_grpc/v1 from proto/kato/v1 (run by `make proto`).

protoc names generated modules after the proto path (kato.v1.*); the package ships them as
kato_grpc.v1.*, so the imports between generated modules are rewritten here, mechanically.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "kato_grpc" / "v1"


def main() -> int:
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "kato" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            return 1
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        for gen in sorted((Path(tmp) / "kato" / "v1").iterdir()):
            text = gen.read_text()
            text = re.sub(r"\bfrom kato\.v1 import\b", "from kato_grpc.v1 import", text)
            text = re.sub(r"\bimport kato\.v1\.", "import kato_grpc.v1.", text)
            text = re.sub(r"\bkato\.v1\.(\w+_pb2)\b", r"kato_grpc.v1.\1", text)
            (OUT_DIR / gen.name).write_text(text)
    shutil.rmtree(ROOT / "kato_grpc" / "v1" / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
