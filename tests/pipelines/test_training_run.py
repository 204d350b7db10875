"""The training run folder: resume checks and the run record."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from engine.errors import TrainingError
from engine.pipelines.training_run import RUN_OPTIONS_FILE, check_resume, record_run, run_record, work_dir


def test_a_new_run_clears_an_earlier_runs_checkpoints_and_a_resume_keeps_them(tmp_path):
    work = tmp_path / ".model.work"
    (work / "fullres" / "checkpoints" / "last").mkdir(parents=True)  # left by an earlier, other run
    record_run(work, {"seed": 1}, resume=True)
    assert (work / "fullres" / "checkpoints" / "last").is_dir()
    record_run(work, {"seed": 2}, resume=False)
    assert sorted(p.name for p in work.iterdir()) == [RUN_OPTIONS_FILE]
    assert json.loads((work / RUN_OPTIONS_FILE).read_text(encoding="utf-8")) == {"seed": 2}


def test_resume_refuses_other_options_and_a_run_that_never_started(tmp_path):
    @dataclass
    class Options:
        seed: int = 0

    work = work_dir(tmp_path / "model")
    assert work == tmp_path / ".model.work"
    with pytest.raises(TrainingError, match="Nothing to resume"):
        check_resume(work, run_record(tmp_path, Options()), resume=True)
    record_run(work, run_record(tmp_path, Options()), resume=False)
    check_resume(work, run_record(tmp_path, Options()), resume=True)
    with pytest.raises(TrainingError, match="seed"):
        check_resume(work, run_record(tmp_path, Options(seed=2)), resume=True)
