"""The `kato` command line against the live server (typer's test runner, and a real process
where signals or streams matter): training from each file format, resuming, stopping with
Ctrl-C, predictions, and the knowledge-base, pattern, symbol and session commands."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kato_grpc import names
from kato_grpc.cli import train as training
from kato_grpc.cli.app import app
from kato_grpc.client import KatoClient
from kato_grpc.engine.naming import pattern_name
from kato_server.devserver import ServerProcess

CORPUS = ["the cat sat", "the dog ran", "the cat sat", "a bird sang loudly", "one", "the dog sat"]


def run(server: ServerProcess, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["--target", server.address, *args], catch_exceptions=False, env={"COLUMNS": "240"}
    )
    assert result.exit_code == 0, result.output
    return result.output


def cli(server: ServerProcess, *args: str) -> list[str]:
    """The command line of a `kato` process (what the console script runs)."""
    return [sys.executable, "-c", "from kato_grpc.cli.app import main; main()", "--target", server.address, *args]


def out(server: ServerProcess, *args: str) -> str:
    """What a `kato` process printed (on a 200-column line), which must succeed."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(cli(server, *args), capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _frequencies(kato: KatoClient, kb: str) -> dict[str, int]:
    return {names.pattern_id(p.name): p.frequency for p in kato.patterns(kb)}


def _wait_for_learns(server: ServerProcess, kb: str, count: int) -> None:
    """Return once ``kb``'s change stream has shown ``count`` changes (learns, when only learning)."""

    def watch() -> None:
        seen = 0
        with KatoClient(server.address) as client:
            for part in client.watch_knowledge_base(kb, since_version=0):
                seen += len(part.events)
                if seen >= count:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watcher.join(120)
    assert not watcher.is_alive(), f"{kb} did not see {count} changes"


def test_train_learns_each_sequence_like_unary_calls(server: ServerProcess, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n\n", encoding="utf-8")
    trained, unary = "cli-" + uuid.uuid4().hex, "unary-" + uuid.uuid4().hex
    out = run(server, "train", str(corpus), "--kb", trained, "--batch", "2", "--parallel", "2")
    assert "5 patterns learned from 6 sequences (4 new, 1 re-learned)" in " ".join(out.split())
    with KatoClient(server.address) as kato:
        for line in CORPUS:  # the same sequences, one Observe per token, then Learn
            session = kato.create_session(unary)
            for token in line.split():
                kato.observe(session.name, [token])
            kato.learn(session.name)
        assert _frequencies(kato, trained) == _frequencies(kato, unary)
        assert _frequencies(kato, trained)[pattern_name([["the"], ["cat"], ["sat"]])] == 2


def test_train_reads_jsonl_csv_and_line_blocks(server: ServerProcess, tmp_path: Path) -> None:
    kb = "formats-" + uuid.uuid4().hex
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"events": [["x", "y"], {"strings": ["z"], "emotives": {"joy": 1.5}}], "metadata": {"src": 1}})
        + "\n"
        + json.dumps([["p"], ["q"]])
        + "\n",
        encoding="utf-8",
    )
    (tmp_path / "b.csv").write_text("m n,o\nr,s t\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("u v\nw\n\nk\nl\n", encoding="utf-8")
    run(server, "train", str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv"), "--kb", kb)
    run(server, "train", str(tmp_path / "c.txt"), "--kb", kb, "--events", "line")
    with KatoClient(server.address) as kato:
        learned = {names.pattern_id(p.name): p for p in kato.patterns(kb)}
        expected = [[["x", "y"], ["z"]], [["p"], ["q"]], [["m", "n"], ["o"]], [["r"], ["s", "t"]],
                    [["u", "v"], ["w"]], [["k"], ["l"]]]  # fmt: skip
        assert set(learned) == {pattern_name(e) for e in expected}
        first = learned[pattern_name(expected[0])]
        assert [dict(r.values) for r in first.emotives] == [{"joy": 1.5}]
        assert first.metadata["src"].values[0].number_value == 1


class Flaky(KatoClient):
    """Fails for good after ``calls`` ObserveSequence calls: an interrupted run."""

    def __init__(self, target: str, calls: int) -> None:
        super().__init__(target)
        self.calls = calls

    def observe_sequence(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls == 0:
            raise RuntimeError("interrupted")
        self.calls -= 1
        return super().observe_sequence(*args, **kwargs)


def test_an_interrupted_run_resumes_without_counting_twice(server: ServerProcess, tmp_path: Path) -> None:
    corpus = tmp_path / "big.txt"
    corpus.write_text("".join(f"s{i} t{i % 7} u{i % 3}\n" for i in range(60)), encoding="utf-8")
    source = training.Corpus([corpus])
    once, resumed = "once-" + uuid.uuid4().hex, "resumed-" + uuid.uuid4().hex
    with KatoClient(server.address) as kato:
        training.train(kato, once, source, batch=5, parallel=2)
        with Flaky(server.address, calls=3) as flaky, pytest.raises(RuntimeError):
            training.train(flaky, resumed, source, batch=5, parallel=2)
        assert 0 < sum(_frequencies(kato, resumed).values()) < 60
        result = training.train(kato, resumed, source, batch=5, parallel=2, resume=True)
        assert result.skipped > 0 and result.skipped + result.sequences == 60
        assert _frequencies(kato, resumed) == _frequencies(kato, once)
        again = training.train(kato, resumed, source, batch=5, parallel=2, resume=True)
        assert (again.sequences, again.skipped) == (0, 60)  # all committed: nothing sent
        training.train(kato, resumed, source, batch=5, parallel=2)  # no --resume: trained again
        assert _frequencies(kato, resumed) == {k: 2 * v for k, v in _frequencies(kato, once).items()}


def test_one_ctrl_c_stops_train_after_the_batches_in_flight_and_resume_learns_the_rest_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"  # every line a pattern of its own: the KB counts what was sent
    corpus.write_text("".join(f"s{i} t{i % 7} u{i % 3}\n" for i in range(1500)), encoding="utf-8")
    kb, once = "interrupted-" + uuid.uuid4().hex, "once-" + uuid.uuid4().hex
    command = cli(server, "train", str(corpus), "--kb", kb, "--batch", "20")
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_learns(server, kb, 100)  # mid-corpus: 100 of 1,500 learned
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=60)
    assert trainer.returncode == 130, err
    said = re.search(
        r"^kato: interrupted: this run committed ([\d,]+) sequences \(([\d,]+) patterns learned, ([\d,]+) new\): "
        r"([\d,]+) of 1,500; run the same command with --resume to learn the other ([\d,]+)$",
        err,
        re.MULTILINE,
    )
    assert said is not None, err
    committed, learned, new, done, rest = (int(n.replace(",", "")) for n in said.groups())
    assert 100 <= committed < 1500 and committed == learned == new == done == 1500 - rest
    with KatoClient(server.address) as client:
        assert client.get_knowledge_base(kb).pattern_count == committed  # exactly what it said, no more
    summary = " ".join(run(server, "train", str(corpus), "--kb", kb, "--batch", "20", "--resume").split())
    assert f"{rest:,} patterns learned from {rest:,} sequences" in summary
    assert f"{committed:,} sequences were committed before" in summary
    run(server, "train", str(corpus), "--kb", once)
    with KatoClient(server.address) as client:
        assert _frequencies(client, kb) == _frequencies(client, once)  # every sequence learned once


def test_a_second_ctrl_c_stops_train_at_once_and_resume_still_learns_each_sequence_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"s{i} t{i % 7} u{i % 3}\n" for i in range(1500)), encoding="utf-8")
    kb = "interrupted-twice-" + uuid.uuid4().hex
    # One worker, 500 sequences a call: after the first call commits, the second is being sent
    # for a second or more — the first Ctrl-C would wait for it, the second does not.
    options = ["--batch", "500", "--parallel", "1"]
    command = cli(server, "train", str(corpus), "--kb", kb, *options)
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert trainer.stderr is not None
    _wait_for_learns(server, kb, 500)
    trainer.send_signal(signal.SIGINT)
    stopping = trainer.stderr.readline()
    assert stopping == "kato: stopping after the batches being sent (Ctrl-C again to stop at once)\n"
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=60)
    assert trainer.returncode == 130, err
    assert err == (
        "kato: interrupted again: stopped without waiting for the batches being sent (each commits whole or not "
        "at all); run the same command with --resume to learn the rest\n"
    )
    run(server, "train", str(corpus), "--kb", kb, *options, "--resume")
    with KatoClient(server.address) as client:
        learned = _frequencies(client, kb)
    assert len(learned) == 1500 and set(learned.values()) == {1}


def test_predict_shows_a_screenful_says_how_many_more_and_limit_asks_for_another_count(
    server: ServerProcess, tmp_path: Path
) -> None:
    kb = "many-" + uuid.uuid4().hex
    corpus = tmp_path / "many.txt"  # 120 patterns after "a b": the server returns max_predictions, 100
    corpus.write_text("".join(f"a b c{i} d{i % 9}\n" for i in range(120)), encoding="utf-8")
    run(server, "train", str(corpus), "--kb", kb)

    def predict(*options: str) -> str:
        return out(server, "predict", kb, "a", "b", *options)

    def ranks(table: str) -> list[int]:
        return [int(rank) for rank in re.findall(r"^│ +(\d+) │", table, re.MULTILINE)]

    table = predict()
    assert ranks(table) == list(range(1, 11))
    assert "10 of 100 predictions: --limit 0 shows all" in table
    assert ranks(predict("--limit", "3")) == [1, 2, 3]
    everything = predict("--limit", "0")
    assert ranks(everything) == list(range(1, 101)) and "--limit 0" not in everything
    full = json.loads(predict("--json"))  # scripts get every prediction
    assert len(full["predictions"]) == 100
    first = json.loads(predict("--json", "--limit", "5"))
    assert first == {**full, "predictions": full["predictions"][:5]}


def on_a_terminal(command: list[str]) -> tuple[int, str, str]:
    """Run ``command`` with a pseudo-terminal as its stderr and a pipe as its stdout: (exit
    status, stdout, what it drew on the terminal, escape sequences removed)."""
    terminal, end = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=end, text=True, env=env)
    os.close(end)
    drawn = b""
    while True:
        try:
            chunk = os.read(terminal, 1 << 16)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(terminal)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))


def test_kb_import_draws_a_bar_of_the_patterns_applied_on_a_terminal_only(
    server: ServerProcess, tmp_path: Path
) -> None:
    records = [json.dumps({"format": "kato-knowledge-base", "version": 1})]
    for i in range(2000):
        records.append(json.dumps({"pattern": {"events": [{"symbols": ["a"]}, {"symbols": [f"b{i}"]}]}}))
    file = tmp_path / "kb.jsonl"
    file.write_text("\n".join(records) + "\n", encoding="utf-8")
    kb = "imported-" + uuid.uuid4().hex
    status, out, drawn = on_a_terminal(cli(server, "kb", "import", kb, str(file), "--batch", "100"))
    assert status == 0, drawn
    assert "2,000 patterns imported in 20 of 20 batches" in out
    counts = [int(n) for n in re.findall(r"patterns [━╸╺ ]+ +(\d+)/2000 ", drawn)]
    assert counts and counts == sorted(counts) and counts[-1] == 2000, drawn
    assert any(0 < n < 2000 for n in counts), drawn  # it moved while the server applied the batches
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(records[:51]) + "\n", encoding="utf-8")
    piped = subprocess.run(
        cli(server, "kb", "import", kb + "-piped", str(small)), capture_output=True, text=True, check=False
    )
    assert piped.returncode == 0 and piped.stderr == "" and "50 patterns imported" in piped.stdout  # no bar


def test_symbols_ls_sorts_by_name_or_by_frequency(server: ServerProcess, tmp_path: Path) -> None:
    kb = "sorted-" + uuid.uuid4().hex
    corpus = tmp_path / "zoo.txt"  # zebra 4, yak 2, ant 1, bee 1: name order is not frequency order
    corpus.write_text("zebra yak\nzebra ant\nzebra yak\nbee zebra\n", encoding="utf-8")
    run(server, "train", str(corpus), "--kb", kb)

    def listed(*options: str) -> list[str]:
        return [s["symbol"] for s in json.loads(out(server, "symbols", "ls", kb, "--json", *options))]

    assert listed() == listed("--sort", "name") == ["ant", "bee", "yak", "zebra"]
    assert listed("--sort", "frequency") == ["zebra", "yak", "ant", "bee"]  # ties by name
    assert listed("--sort", "frequency", "--limit", "2") == ["zebra", "yak"]  # the top two of all
    assert listed("--limit", "2") == ["ant", "bee"]
    table = out(server, "symbols", "ls", kb, "--sort", "frequency")
    assert re.findall(r"^│ (\w+) ", table, re.MULTILINE) == ["zebra", "yak", "ant", "bee"]


def test_predict_and_the_admin_commands(server: ServerProcess, tmp_path: Path) -> None:
    kb = "admin-" + uuid.uuid4().hex
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world again\nhello there\n", encoding="utf-8")
    run(server, "train", str(corpus), "--kb", kb)
    table = run(server, "predict", kb, "hello", "world", "--config", "recall_threshold=0.1")
    assert "again" in table and "potential" in table
    predicted = json.loads(run(server, "predict", kb, "hello", "world", "--json"))
    assert predicted["predictions"][0]["future"] == [{"symbols": ["again"]}]
    stats = json.loads(run(server, "kb", "stats", kb, "--json"))
    assert (stats["pattern_count"], stats["symbol_count"]) == ("2", "4")  # int64: strings in JSON
    listed = json.loads(run(server, "patterns", "ls", kb, "--json"))
    assert len(listed) == 2 and "hello" in run(server, "patterns", "ls", kb)
    name = listed[0]["name"]
    assert json.loads(run(server, "patterns", "show", name, "--json"))["name"] == name
    symbols = json.loads(run(server, "symbols", "ls", kb, "--json"))
    assert [s["symbol"] for s in symbols] == ["again", "hello", "there", "world"]
    assert json.loads(run(server, "symbols", "show", kb, "hello", "--json"))["pattern_member_frequency"] == "2"
    # Export, import into a fresh KB, the same patterns; importing the file again adds nothing.
    exported, copy = tmp_path / "kb.jsonl", "copy-" + uuid.uuid4().hex
    run(server, "kb", "export", kb, "-o", str(exported))
    assert json.loads(exported.read_text().splitlines()[0])["format"] == "kato-knowledge-base"
    assert "2 patterns imported" in run(server, "kb", "import", copy, str(exported))
    assert "0 patterns imported" in run(server, "kb", "import", copy, str(exported))
    with KatoClient(server.address) as kato:
        assert _frequencies(kato, copy) == _frequencies(kato, kb)
    # `kb ls`: every KB ever written (the session's server is shared: others' KBs are there too).
    kbs = {k["name"]: k for k in json.loads(run(server, "kb", "ls", "--limit", "100000", "--json"))}
    assert kbs[names.knowledge_base(kb)]["pattern_count"] == kbs[names.knowledge_base(copy)]["pattern_count"] == "2"
    assert kb in run(server, "kb", "ls", "--limit", "100000")
    session = json.loads(run(server, "sessions", "create", kb, "-c", "max_predictions=3", "--json"))
    assert session["config"]["max_predictions"] == 3
    assert session["name"] in run(server, "sessions", "show", session["name"])
    run(server, "sessions", "rm", session["name"])
    run(server, "patterns", "rm", name)
    run(server, "kb", "clear", kb, "--yes")
    assert json.loads(run(server, "kb", "stats", kb, "--json")).get("pattern_count", "0") == "0"


def test_help_lists_everything_and_errors_are_one_line(server: ServerProcess) -> None:
    listing = CliRunner().invoke(app, ["--help"]).output
    for command in (
        "train",
        "predict",
        "predictions",
        "kb",
        "patterns",
        "symbols",
        "sessions",
        "watch",
        "serve",
        "replay",
    ):
        assert command in listing
    for group in ("kb", "patterns", "symbols", "sessions"):
        assert CliRunner().invoke(app, [group, "--help"]).exit_code == 0
    failed = subprocess.run(
        cli(server, "sessions", "show", "sessions/s-" + "0" * 32), capture_output=True, text=True, check=False
    )
    assert failed.returncode == 1 and "NOT_FOUND SESSION_NOT_FOUND" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_the_readme_first_ten_minutes(server: ServerProcess, tmp_path: Path) -> None:
    kb = "weather-" + uuid.uuid4().hex
    example = Path(__file__).resolve().parents[2] / "examples" / "weather.txt"
    summary = " ".join(run(server, "train", str(example), "--kb", kb).split())
    assert "12 patterns learned from 12 sequences (11 new, 1 re-learned)" in summary
    table = run(server, "predict", kb, "clouds", "wind")
    assert "umbrella" in table and "thunder" in table
    assert "w" in run(server, "symbols", "ls", kb)
    run(server, "kb", "export", kb, "-o", str(tmp_path / "weather.jsonl"))
    assert "11 patterns imported" in run(server, "kb", "import", kb + "-copy", str(tmp_path / "weather.jsonl"))


def _learn(kato: KatoClient, kb: str, *words: str) -> str:
    session = kato.create_session(kb)
    for word in words:
        kato.observe(session.name, [word])
    return kato.learn(session.name).pattern


def test_watch_shows_each_changed_pattern_with_its_frequency_and_events(server: ServerProcess) -> None:
    kb = "watch-" + uuid.uuid4().hex
    with KatoClient(server.address) as client:
        weather = _learn(client, kb, "sun", "rain")
        _learn(client, kb, "sun", "rain")
        long = _learn(client, kb, *(f"word{i}" for i in range(30)))
        gone = _learn(client, kb, "x", "y")
        client.delete_pattern(gone)
    sun, words, xy = (names.pattern_id(p)[:8] for p in (weather, long, gone))
    # Replayed from version 0: each line reads the pattern as it is now.
    command = cli(server, "watch", kb, "--since", "0")
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
    try:
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline().rstrip("\n") for _ in range(5)]
    finally:
        watcher.terminate()
        watcher.wait(10)
    assert lines[:2] == [f"v1 learned    {sun} freq 2  sun | rain", f"v2 re-learned {sun} freq 2  sun | rain"]
    assert lines[2].startswith(f"v3 learned    {words} freq 1  word0 | word1 | word2 | ")  # one line, cut short
    assert lines[2].endswith("…") and len(lines[2]) == 80
    assert lines[3:] == [f"v4 learned    {xy} (deleted since)", f"v5 deleted    {xy}"]


def test_watch_prints_changes_as_they_commit(server: ServerProcess) -> None:
    kb = "watch-" + uuid.uuid4().hex
    watcher = subprocess.Popen(cli(server, "watch", kb, "--since", "0", "--json"), stdout=subprocess.PIPE, text=True)
    try:
        with KatoClient(server.address) as kato:
            session = kato.create_session(kb)
            for word in ("sun", "rain"):
                kato.observe(session.name, [word])
            learned = kato.learn(session.name).pattern
        assert watcher.stdout is not None
        line = json.loads(watcher.stdout.readline())
        assert line["events"] == [
            {"kind": "KNOWLEDGE_BASE_EVENT_KIND_PATTERN_LEARNED", "version": "1", "pattern": learned}
        ]
    finally:
        watcher.terminate()
        watcher.wait(10)
