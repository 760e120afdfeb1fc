"""A client in another language: Node (grpc-js + proto-loader, loaded from proto/) runs the
README round trip and decodes an error's google.rpc.Status details (tests/node/roundtrip.js)."""

from __future__ import annotations

import json
import subprocess

from kato_grpc import names
from kato_grpc.engine.naming import pattern_name
from kato_server.devserver import ROOT, ServerProcess


def test_a_node_client_runs_the_round_trip(server: ServerProcess) -> None:
    proc = subprocess.run(
        ["node", str(ROOT / "tests" / "node" / "roundtrip.js"), server.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    # Bounded counters are plain numbers in JSON-minded clients, enums have their names.
    assert seen["ttl_seconds"] == 3600 and seen["learn_status"] == "LEARN_STATUS_LEARNED"
    # Resource names (AIP-122), one form of a pattern's name in every message.
    node = seen["node"]
    assert seen["session"]["name"].startswith("sessions/s-")
    assert seen["session"]["knowledge_base"] == names.knowledge_base(node)
    pattern = names.pattern(node, pattern_name([["hello"], ["world"], ["again"]]))
    assert seen["pattern"] == pattern
    assert seen["got_pattern"] == {"name": pattern, "frequency": "1"}  # int64: a string in JSON
    assert seen["prediction"] == {
        "pattern": pattern,
        "type": "PREDICTION_TYPE_PROTOTYPICAL",
        "future": [["world"], ["again"]],
    }
    error = seen["error"]
    assert error["grpcCode"] == 3 and error["status"]["code"] == 3  # INVALID_ARGUMENT
    kinds = {d["type"]: d for d in error["status"]["details"]}
    assert kinds["google.rpc.ErrorInfo"]["domain"] == "kato.v1"
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "SYMBOL_TOO_LONG"
    violations = kinds["google.rpc.BadRequest"]["fieldViolations"]  # protobufjs camel-cases
    assert [v["field"] for v in violations] == ["observation.strings[0]"]


def test_the_readme_s_node_snippet_is_the_one_the_client_runs() -> None:
    """The README's decodeStatus is roundtrip.js's, character for character (issue 24, item
    10): the test above runs it, so the README's ten lines cannot rot."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```js\n", 1)[1].split("```", 1)[0]
    snippet = block[block.index("// google.rpc.Status") :]
    assert "function decodeStatus(error)" in snippet
    assert snippet in (ROOT / "tests" / "node" / "roundtrip.js").read_text(encoding="utf-8")
