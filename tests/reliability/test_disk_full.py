"""A full disk (or a device that fails while writing) is the user's to fix: one `error:` line, the
output folder as it was, no staging folder left behind."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli import main
from engine.errors import EngineError
from engine.io.image import Image, write_image
from engine.pipelines import outputs


def _disk_full(path):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_all_turns_a_full_disk_into_an_error_and_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    writers = {"report.json": lambda p: p.write_text("{}"), "segmentation.nii.gz": _disk_full}
    with pytest.raises(outputs.OutputWriteError, match="No space left on device.*Nothing was written"):
        outputs.write_all(out, writers)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_itk_write_failure_names_the_file(tmp_path, monkeypatch):
    def failing_write(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute\nDescription: Could not write")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    image = Image(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(OSError, match="cannot write a.nii.gz"):
        write_image(image, tmp_path / "a.nii.gz")
    assert not list(tmp_path.iterdir())


def test_engine_run_on_a_full_disk_prints_one_error_line(tmp_path, monkeypatch, capsys):
    import toy_task

    from engine.tasks import register_task, unregister_task

    register_task(toy_task.TASK)
    try:
        data, model = tmp_path / "data", tmp_path / "model"
        assert main(["synth", "--task", "toy", "--cases", "2", "--out", str(data)]) == 0
        assert main(["train", "--task", "toy", "--data", str(data), "--out", str(model)]) == 0
        image = next((data / "imagesTr").iterdir())
        monkeypatch.setattr("engine.reporting.overview.render_overview", lambda *a, **k: _disk_full(None))
        capsys.readouterr()
        out = tmp_path / "run"
        assert main(["run", "--task", "toy", "--input", str(image), "--out", str(out), "--model", str(model)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: Could not write the results")
        assert not out.exists() or not [p for p in out.iterdir()]
    finally:
        unregister_task("toy")


def test_a_write_failure_is_a_user_facing_error():
    assert issubclass(outputs.OutputWriteError, EngineError)  # printed as one error: line by the CLI
