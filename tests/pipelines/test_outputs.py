"""engine.pipelines.outputs.write_all: concurrent writers, a last writer after them, all or nothing."""

from __future__ import annotations

import os
import stat
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
    contents = {n: p.read_text(encoding="utf-8") for n, p in files.items()}
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
    assert (out / "a.txt").read_text(encoding="utf-8") == "previous run"


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="b.txt produced no file"):
        outputs.write_all(out, {"a.txt": _text("a"), "b.txt": lambda p: None})
    assert list(out.iterdir()) == []


def test_an_output_folder_is_locked_once_and_released_without_a_trace(tmp_path):
    out = tmp_path / "new" / "run"
    with outputs.lock_output(out) as lock:
        assert (out / outputs.LOCK_FILE).read_text(encoding="utf-8").startswith(f"{os.getpid()}\n")
        with pytest.raises(outputs.OutputBusy, match=f"being written by process {os.getpid()}"):
            outputs.lock_output(out)
    assert not out.exists()  # created for the run, left empty: removed again
    assert lock.path == out / outputs.LOCK_FILE
    out.mkdir()
    with outputs.lock_output(out):
        (out / "result.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


def test_stale_staging_folders_are_removed_and_files_honour_the_umask(tmp_path):
    out = tmp_path / "run"
    (out / ".staging-123-abc").mkdir(parents=True)
    (out / ".staging-123-abc" / "half.nii.gz").write_text("half")
    assert outputs.remove_stale_staging(out) == [out / ".staging-123-abc"]
    previous = os.umask(0o077)
    try:
        files = outputs.write_all(out, {"a.txt": _text("a")})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(files["a.txt"].stat().st_mode) == 0o600
    previous = os.umask(0o002)
    try:
        files = outputs.write_all(out, {"a.txt": _text("a")})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(files["a.txt"].stat().st_mode) == 0o664
