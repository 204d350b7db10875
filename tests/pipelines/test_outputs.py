"""engine.pipelines.outputs.write_all: concurrent writers, a last writer after them, all or nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.pipelines import outputs


def _text(content: str):
    return lambda p: Path(p).write_text(content)


def test_writers_run_concurrently_and_last_runs_after_all_of_them(tmp_path):
    out = tmp_path / "run"
    both_running = threading.Barrier(2, timeout=10)  # breaks (and fails the test) if run one after another

    def meeting(content):
        def write(p):
            both_running.wait()
            Path(p).write_text(content)
        return write

    seen_by_last = []

    def report(p):
        seen_by_last.extend(sorted(f.name for f in Path(p).parent.iterdir()))
        Path(p).write_text("report")

    files = outputs.write_all(out, {"a.txt": meeting("a"), "b.txt": meeting("b")},
                              last={"report.json": report})
    assert seen_by_last == ["a.txt", "b.txt"]  # both finished, in the staging folder, before the report
    contents = {n: p.read_text() for n, p in files.items()}
    assert contents == {"a.txt": "a", "b.txt": "b", "report.json": "report"}
    assert sorted(f.name for f in out.iterdir()) == ["a.txt", "b.txt", "report.json"]  # no staging left


def test_a_failing_writer_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("previous run")
    finished = threading.Event()
    report_called = []

    def slow(p):
        finished.wait(0.2)
        Path(p).write_text("new")
        finished.set()

    def broken(p):
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        outputs.write_all(out, {"a.txt": slow, "b.txt": broken}, last={"report.json": report_called.append})
    assert finished.is_set()  # the other writer finished before the staging folder was removed
    assert report_called == []
    assert sorted(f.name for f in out.iterdir()) == ["a.txt"]
    assert (out / "a.txt").read_text() == "previous run"


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="b.txt produced no file"):
        outputs.write_all(out, {"a.txt": _text("a"), "b.txt": lambda p: None})
    assert list(out.iterdir()) == []
