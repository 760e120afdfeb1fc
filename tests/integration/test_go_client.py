"""A client in another language: Go (issue 24, item 9). The README's "Calling it from Go"
commands generate the package kato.example/kato/v1 from proto/ (protoc, and buf generate);
tests/go/roundtrip is built against each, offline, from Debian's Go packages, and run against
a live server: the round trip, an ObserveStream, an error decoded into ErrorInfo and
BadRequest.

Skipped, saying why, only where there is no Go toolchain at all; with `go` but without the
packages the build needs, or when the build fails, the test fails. The packages are generated
into .data/go-client (a fixed directory: Go's cache keys name a package's directory) and built
with a cache in the temporary directory, which every checkout on the machine shares: only the
first run compiles grpc-go and protobuf (about 40 s of CPU), later ones link."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_server.devserver import ROOT, ServerProcess

GOCODE = Path("/usr/share/gocode")  # Debian's Go library sources, for GOPATH mode
# What the build takes from Debian (README, "Calling it from Go"); .ci/run installs them.
PACKAGES = (
    "golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev"
)
# Something each package puts on the machine, beside the package's name.
NEEDED: list[tuple[str | Path, str]] = [
    ("protoc", "protobuf-compiler"),
    ("protoc-gen-go", "protoc-gen-go"),
    ("protoc-gen-go-grpc", "protoc-gen-go-grpc"),
    (GOCODE / "src/google.golang.org/protobuf/proto/proto.go", "golang-google-protobuf-dev"),
    (GOCODE / "src/google.golang.org/grpc/server.go", "golang-google-grpc-dev"),
    (GOCODE / "src/google.golang.org/genproto/googleapis/rpc/errdetails", "golang-google-genproto-dev"),
    # registry.go is the 1.4+ runtime's; the 1.3 one (golang-github-golang-protobuf-1-3-dev,
    # which apt picks for golang-google-grpc-dev) panics on today's generated code.
    (GOCODE / "src/github.com/golang/protobuf/proto/registry.go", "golang-github-golang-protobuf-1-5-dev"),
]
WORK = ROOT / ".data" / "go-client"


def go_cache() -> Path:
    """$TMPDIR/kato-go-build-<uid>, or .data/go-client/cache if someone else owns that."""
    shared = Path(tempfile.gettempdir()) / f"kato-go-build-{os.getuid()}"
    shared.mkdir(mode=0o700, exist_ok=True)
    return shared if shared.stat().st_uid == os.getuid() else WORK / "cache"


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"the README lost its {marker} block"
    return match.group(1)


def missing_packages() -> list[str]:
    missing = []
    for thing, package in NEEDED:
        present = thing.exists() if isinstance(thing, Path) else shutil.which(thing) is not None
        if not present:
            missing.append(f"{package} ({thing})")
    return missing


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(args)[:200]}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def generate(block: str, gopath: Path) -> Path:
    """Runs a README block as written, its output directory moved to <gopath>/src/kato.example."""
    out = gopath / "src" / "kato.example"
    shutil.rmtree(out, ignore_errors=True)
    assert block.count("../kato-go") == 1
    run(["bash", "-euo", "pipefail", "-c", block.replace("../kato-go", str(out))])
    return out


def build(gopath: Path, binary: Path) -> None:
    env = {
        **os.environ,
        "GO111MODULE": "off",  # Debian's Go libraries are GOPATH sources, not modules
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
        "GOCACHE": str(go_cache()),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",  # no C compiler needed (golang-go only recommends gcc)
    }
    run(["go", "build", "-o", str(binary), "./tests/go/roundtrip"], env=env, timeout=900)


@pytest.mark.skipif(
    shutil.which("go") is None,
    reason="no Go toolchain (`go`) on this machine: the Go client round trip (tests/go) did not run; "
    f"on Debian: apt-get install --no-install-recommends {PACKAGES} (.ci/run does)",
)
def test_a_go_client_generated_as_the_readme_says_runs_the_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    missing = missing_packages()
    if missing:
        note = ""
        if any(m.startswith("golang-github-golang-protobuf-1-5-dev") for m in missing):
            note = " (golang-google-grpc-dev alone brings the 1.3 runtime, which panics on generated code)"
        pytest.fail(f"Go is installed but the Go client test needs {', '.join(missing)}{note}; install {PACKAGES}")
    generated = {
        "protoc": generate(readme_block("go-example"), WORK / "protoc"),
        "buf": generate(readme_block("go-buf-example"), WORK / "buf"),
    }
    for out in generated.values():
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert files == ["kato/v1/engine.pb.go", "kato/v1/kato_service.pb.go", "kato/v1/kato_service_grpc.pb.go"]
    for how, out in generated.items():
        binary = tmp_path / f"roundtrip-{how}"
        build(out.parent.parent, binary)
        seen = json.loads(run([str(binary), server.address], timeout=60))
        check(seen)


def check(seen: Any) -> None:
    # Resource names (AIP-122), one form of a pattern's name in every message.
    node = seen["node"]
    assert node.startswith("go-client-")
    pattern = names.pattern(node, pattern_name([["hello"], ["world"], ["again"]]))
    assert seen["session"]["name"].startswith("sessions/s-")
    assert seen["session"]["knowledge_base"] == names.knowledge_base(node)
    assert seen["ttl_seconds"] == 3600 and seen["learn_status"] == "LEARN_STATUS_LEARNED"
    assert seen["pattern"] == pattern
    assert seen["got_pattern"] == {"name": pattern, "frequency": 1}
    assert seen["stm_length"] == 1
    assert seen["prediction"] == {
        "pattern": pattern,
        "type": "PREDICTION_TYPE_PROTOTYPICAL",
        "future": [["world"], ["again"]],
    }
    # ObserveStream: one answer per observation, in order, the first with its predictions;
    # learning what the stream observed reinforces the same pattern.
    assert seen["stream"] == [
        {
            "stm_length": 2,
            "time": seen["stream"][0]["time"],
            "prediction": {"pattern": pattern, "type": "PREDICTION_TYPE_PROTOTYPICAL", "future": [["again"]]},
        },
        {"stm_length": 3, "time": seen["stream"][0]["time"] + 1},
    ]
    assert seen["relearned"] == pattern and seen["frequency_after_stream"] == 2
    # The error's google.rpc.Status details, decoded by grpc-go into the errdetails types.
    error = seen["error"]
    assert error["code"] == 3 and error["code_name"] == "InvalidArgument"
    assert error["domain"] == "kato.v1" and error["reason"] == "SYMBOL_TOO_LONG"
    assert error["violations"] == ["observation.strings[0]"]


def test_the_readme_s_go_snippet_is_the_one_the_client_runs() -> None:
    """The README's decodeStatus is main.go's, character for character: the test above runs it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("```go\n", 1)[1].split("```", 1)[0]
    assert "func decodeStatus(err error) Status" in snippet
    assert snippet in (ROOT / "tests" / "go" / "roundtrip" / "main.go").read_text(encoding="utf-8")
