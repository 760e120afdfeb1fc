"""`kato train` and `kato kb import` on hostile files (issue 21, item 9), as a user runs them
(a real process against the live server): a binary, compressed or malformed file, a wrong
header, an out-of-range frequency, a line the server refuses — each is one line on stderr
naming the file, the line and the field (with the server's own status when it refused), exit
status 1, and nothing applied beyond what that line says."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kato_grpc import names
from kato_grpc.client import KatoClient
from kato_server.devserver import ROOT, ServerProcess

MAX_FREQUENCY = 2**53 - 1  # the server's bound on a pattern's frequency (server/kato_server/validation.py)


def kato(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from kato_grpc.cli.app import main; main()", "--target", server.address]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, check=False)


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command wrote (and that it failed, without a traceback)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "UNKNOWN" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def pattern_count(server: ServerProcess, kb: str) -> int:
    with KatoClient(server.address) as client:
        return client.get_knowledge_base(kb).pattern_count


def frequencies(server: ServerProcess, kb: str) -> dict[str, int]:
    with KatoClient(server.address) as client:
        return {names.pattern_id(p.name): p.frequency for p in client.patterns(kb)}


# --- kato train --------------------------------------------------------------------------

NOT_TEXT = b"\x96" + random.Random(21).randbytes(4095)  # invalid UTF-8 from its first byte


TYPED = b'[["a"], ["b"]]\n{"events": [["x"], ["y", 7]]}\n'
EMOTIVE = b'{"events": [{"strings": ["x"], "emotives": {"joy": "high"}}]}\n'


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("random.txt", NOT_TEXT, r"random\.txt:1: is not UTF-8 text \(byte 0x96 in column 1\)"),
        ("corpus.txt.gz", gzip.compress(b"the cat sat\n", mtime=0), r"corpus\.txt\.gz:1: is a gzip-compressed file"),
        ("random.jsonl", NOT_TEXT, r"random\.jsonl:1: is not UTF-8 text"),
        ("broken.jsonl", b'[["a"], ["b"]]\n{"events": [["x"]\n', r"broken\.jsonl:2: is not JSON \(.+ at column \d+\)"),
        ("typed.jsonl", TYPED, r"typed\.jsonl:2: events\[1\]\[1\]: is not a string: 7"),
        ("emotive.jsonl", EMOTIVE, r"emotive\.jsonl:1: events\[0\]\.emotives\.joy: is not a finite number"),
        ("nul.txt", b"the cat\nsat \x00 down\n", r"nul\.txt:2: has a NUL character in column 5"),
    ],
)
def test_train_refuses_a_file_it_cannot_read_in_one_line_and_learns_nothing(
    server: ServerProcess, tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    kb = "hostile-" + uuid.uuid4().hex
    line = refused(kato(server, "train", str(path), "--kb", kb))
    assert re.fullmatch(r"kato: " + re.escape(str(tmp_path)) + "/" + expected + ".*", line), line
    assert pattern_count(server, kb) == 0  # the whole corpus is read before anything is sent


def test_train_names_the_line_the_server_refused_and_what_it_committed(server: ServerProcess, tmp_path: Path) -> None:
    corpus = tmp_path / "long.txt"
    lines = [f"a{i} b{i} c{i}" for i in range(8)]
    lines[3] = "x " + "y" * 2000 + " z"  # a symbol over the server's 1,024 bytes
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kb = "refused-" + uuid.uuid4().hex
    # One worker, one sequence a call: lines 1-3 commit, line 4 is refused, nothing after.
    line = refused(kato(server, "train", str(corpus), "--kb", kb, "--batch", "1", "--parallel", "1"))
    assert line.startswith(
        f"kato: {corpus}:4: events[1].strings[0]: INVALID_ARGUMENT SYMBOL_TOO_LONG: is longer than 1024 bytes; "
        "this run committed 3 sequences before it stopped [request "
    ), line
    assert pattern_count(server, kb) == 3


# --- kato kb import ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A knowledge base of four patterns and the lines of its export (a header, four patterns)."""
    directory = tmp_path_factory.mktemp("exported")
    kb = "source-" + uuid.uuid4().hex
    corpus = directory / "corpus.txt"
    corpus.write_text("a b c\nd e f\ng h i\nj k l\n", encoding="utf-8")
    assert kato(server, "train", str(corpus), "--kb", kb).returncode == 0
    out = directory / "kb.jsonl"
    assert kato(server, "kb", "export", kb, "-o", str(out)).returncode == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    return kb, lines


def _with_frequency(line: str, value: str) -> str:
    record = json.loads(line)
    record["pattern"]["frequency"] = value
    return json.dumps(record)


def _unlisted_symbols(line: str) -> str:
    record = json.loads(line)
    record["pattern"]["events"][0]["symbols"] = "not a list"
    return json.dumps(record)


BIG = "12345678901234567890123"  # 23 digits: more than an int64 holds


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("binary", r"kb\.jsonl:1: is not UTF-8 text \(byte 0x96 in column 1\): a binary file\?"),
        ("gzip", r"kb\.jsonl:1: is a gzip-compressed file, not text: decompress it first"),
        ("format", r'kb\.jsonl:1: format: is "something-else", not "kato-knowledge-base"'),
        ("version", r"kb\.jsonl:1: version: is 2; this kato reads 1"),
        ("json", r"kb\.jsonl:3: is not JSON \(.+\); nothing was imported"),
        ("23 digits", rf"kb\.jsonl:3: pattern\.frequency: Value out of range: {BIG}; nothing was imported"),
        ("events", r"kb\.jsonl:3: pattern\.events\[0\]\.symbols: .+; nothing was imported"),
    ],
)
def test_kb_import_refuses_a_bad_file_in_one_line_and_imports_nothing(
    server: ServerProcess, tmp_path: Path, exported: tuple[str, list[str]], case: str, expected: str
) -> None:
    _, lines = exported
    text = "\n".join(lines) + "\n"

    def header(fmt: str, version: int) -> bytes:
        return "\n".join([json.dumps({"format": fmt, "version": version}), *lines[1:]]).encode()

    def third(line: str) -> bytes:  # the file with its line 3 replaced
        return "\n".join([*lines[:2], line, *lines[3:]]).encode()

    bad = {
        "binary": lambda: NOT_TEXT,
        "gzip": lambda: gzip.compress(text.encode()),
        "format": lambda: header("something-else", 1),
        "version": lambda: header("kato-knowledge-base", 2),
        "json": lambda: third(lines[2][:-9]),
        "23 digits": lambda: third(_with_frequency(lines[2], BIG)),
        "events": lambda: third(_unlisted_symbols(lines[2])),
    }[case]()
    path = tmp_path / "kb.jsonl"
    path.write_bytes(bad)
    kb = "target-" + uuid.uuid4().hex
    line = refused(kato(server, "kb", "import", kb, str(path)))
    assert re.fullmatch(r"kato: " + re.escape(str(tmp_path)) + "/" + expected, line), line
    assert pattern_count(server, kb) == 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # The server's bound: refused by the server, which names the batch; its status is shown.
        ("2^53", rf"pattern\.frequency: INVALID_ARGUMENT INVALID_FIELD: must be between 1 and {MAX_FREQUENCY} .+"),
        ("23 digits", rf"pattern\.frequency: Value out of range: {BIG}"),  # not even an int64: refused here
        ("json", r"is not JSON \(.+\)"),
    ],
)
def test_kb_import_stops_at_a_bad_line_says_what_it_imported_and_resumes(
    server: ServerProcess, tmp_path: Path, exported: tuple[str, list[str]], case: str, expected: str
) -> None:
    source, lines = exported
    bad_line = {
        "2^53": _with_frequency(lines[4], str(MAX_FREQUENCY + 1)),
        "23 digits": _with_frequency(lines[4], BIG),
        "json": lines[4][:-5],
    }[case]
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join([*lines[:4], bad_line]) + "\n", encoding="utf-8")
    kb = "partial-" + uuid.uuid4().hex
    # Two patterns a batch: batch 0 is lines 2-3, batch 1 (lines 4-5) holds the bad line 5.
    line = refused(kato(server, "kb", "import", kb, str(path), "--batch", "2"))
    said = re.fullmatch(
        r"kato: " + re.escape(str(path)) + ":5: " + expected + r"; batch 0 was imported \(the records before line 4\); "
        r"after fixing it, the same command with --import-id (file-[0-9a-f]{32}) imports the rest( \[request \w+\])?",
        line,
    )
    assert said is not None, line
    imported = frequencies(server, kb)
    assert len(imported) == 2 and set(imported) < set(frequencies(server, source))  # batch 0 and nothing else
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")  # fixed
    resumed = kato(server, "kb", "import", kb, str(path), "--batch", "2", "--import-id", said.group(1))
    assert resumed.returncode == 0, resumed.stderr
    assert "2 patterns imported in 1 of 2 batches" in " ".join(resumed.stdout.split())
    assert frequencies(server, kb) == frequencies(server, source)  # every pattern once: batch 0 was skipped
