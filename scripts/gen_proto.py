"""Regenerate the generated packages from proto/ (run by `make proto`): proto/kato/v1 (the
API) -> kato_grpc/v1, proto/kato/internal/v1 (storage messages) -> kato_grpc/internal/v1.

protoc names generated modules after the proto path (kato.v1.*); the package ships them as
kato_grpc.v1.* (kato_grpc.internal.v1.*), so the imports between generated modules are
rewritten here, mechanically.
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
PACKAGES = ("v1", "internal/v1")  # proto/kato/<package> -> kato_grpc/<package>


def main() -> int:
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(
        str(p.relative_to(PROTO_DIR)) for pkg in PACKAGES for p in (PROTO_DIR / "kato" / pkg).glob("*.proto")
    )
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{ROOT / 'third_party' / 'googleapis'}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            return 1
        for pkg in PACKAGES:
            out_dir = ROOT / "kato_grpc" / pkg
            out_dir.mkdir(parents=True, exist_ok=True)
            for old in out_dir.glob("*_pb2*.py*"):
                old.unlink()
            for gen in sorted((Path(tmp) / "kato" / pkg).iterdir()):
                if gen.is_file():
                    (out_dir / gen.name).write_text(_rewrite(gen.read_text()))
            shutil.rmtree(out_dir / "__pycache__", ignore_errors=True)
    return 0


def _rewrite(text: str) -> str:
    """kato.<pkg> module references -> kato_grpc.<pkg> (both packages)."""
    text = re.sub(r"\bfrom kato\.((?:internal\.)?v1) import\b", r"from kato_grpc.\1 import", text)
    text = re.sub(r"\bimport kato\.((?:internal\.)?v1)\.", r"import kato_grpc.\1.", text)
    return re.sub(r"\bkato\.((?:internal\.)?v1)\.(\w+_pb2)\b", r"kato_grpc.\1.\2", text)


if __name__ == "__main__":
    sys.exit(main())
