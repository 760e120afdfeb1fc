"""The README's grpcurl round trip works as written (against a test server's port)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from kato_server import devstack
from kato_server.devserver import ROOT, ServerProcess


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- grpcurl-example[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert match, "the README lost its grpcurl example"
    return match.group(1)


def test_readme_grpcurl_round_trip(server: ServerProcess) -> None:
    grpcurl_dir = Path(sys.executable).parent
    script = readme_block().replace("localhost:50051", server.address)
    script = script.replace(".venv/bin/grpcurl", str(grpcurl_dir / "grpcurl"))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "kato.v1.KatoService" in out and "grpc.reflection.v1alpha.ServerReflection" in out
    assert '"LEARN_STATUS_LEARNED"' in out
    assert re.search(r'"future": \[\s*\{\s*"symbols": \[\s*"world"', out)
    assert '"SERVING"' in out
    # Bounded counters are JSON numbers, kinds are enum names, metadata are JSON values.
    assert re.search(r'"stm_length": 1\b', out) and re.search(r'"length": 3\b', out)
    assert '"type": "PREDICTION_TYPE_PROTOTYPICAL"' in out
    assert re.search(r'"n": \[\s*3\s*\]', out)
    # Resource names (AIP-122): one form of the pattern's everywhere.
    learned = re.findall(r'"pattern": "(knowledgeBases/demo/patterns/[0-9a-f]{40})"', out)
    assert len(learned) == 2 and len(set(learned)) == 1  # Learn, then GetPredictions
    assert f'"name": "{learned[0]}"' in out  # GetPattern


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_under_v1_and_v1alpha(server: ServerProcess, version: str) -> None:
    # Current tools ask grpc.reflection.v1 first; older ones v1alpha. Same messages on the wire.
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="kato.v1.KatoService"),
        ]
        listed, file = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"kato.v1.KatoService", "grpc.reflection.v1.ServerReflection"} <= names
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b) for b in file.file_descriptor_response.file_descriptor_proto
    ]
    assert "kato/v1/kato_service.proto" in {p.name for p in protos}


def test_readme_python_example(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- python-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its Python example"
    exec(compile(match.group(1).replace("127.0.0.1:50051", server.address), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed and printed[0].startswith("knowledgeBases/demo/patterns/")
    assert "[['world'], ['again']]" in printed[0]


def test_make_run_says_where_it_serves_then_serves_there(tmp_path: Path) -> None:
    """The README's first command is not a silent wait (issue 24, item 2): `make run` says
    what it starts and on which port — KATO_PORT's, as the README says — and then serves
    there; Ctrl-C (SIGINT to its process group) stops it and its stores."""
    port = devstack.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KATO_", "MAKE", "MFLAGS"))}
    env.update(KATO_PORT=str(port), KATO_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen(
        # --old-file: the virtualenv this test runs in is the one to use (never reinstalled here).
        ["make", "--no-print-directory", "--old-file=.venv/.installed", "run"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        said = [proc.stdout.readline() for _ in range(2)]  # the announcement, then the command make runs
        assert f"make: starting the local stores and kato on 127.0.0.1:{port}" in said[0], said
        # Health on that port (the stores start first); make's own exit would end it sooner.
        ServerProcess(port, env, tmp_path / "unused.log").wait_serving(timeout=120)
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
