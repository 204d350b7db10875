"""CLI errors instead of tracebacks, and batches that report failure.

Every user mistake gives exactly one ``error:`` line on stderr and status 2 (no traceback, no Python
names, no NumPy reprs); option values are range-checked before any work starts; a batch exits 1 when
any case failed and lists the failures; "Outputs in" names only the files the run wrote."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.tasks import register_task, unregister_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The plug-in example task registered in this process, a trained toy model and one input image."""
    import toy_task

    register_task(toy_task.TASK)
    yield {**toy_task.make_trained_toy(tmp_path_factory.mktemp("toy")), "module": toy_task}
    unregister_task("toy")


def run_args(toy, out: str | Path, source: Path | None = None, *extra: str) -> list[str]:
    return ["run", "--task", "toy", "--model", str(toy["model"]), "--input", str(source or toy["image"]),
            "--out", str(out), "--no-gradcam", *extra]


def one_error_line(err: str) -> str:
    """The single ``error:`` line of ``err``, which must hold no traceback or Python/NumPy names."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "np.float64" not in err and "=True" not in err, err
    return errors[0]


def engine(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


# --- options range-checked by the parser ------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--fold", "abc"], "argument --fold: 'abc' is not a fold number"),
    (["--fold", "-1"], "argument --fold"),
    (["--folds", "2", "--fold", "7"], "--fold 7 does not exist with 2 folds"),
    (["--fold", "5"], "--fold 5 does not exist with 5 folds"),
    (["--folds", "1"], "argument --folds: 1 is too small"),
    (["--epochs", "0"], "argument --epochs: 0 is too small"),
    (["--batch-size", "0"], "argument --batch-size: 0 is too small"),
    (["--batch-size", "-3"], "argument --batch-size"),
    (["--steps-per-epoch", "0"], "argument --steps-per-epoch"),
    (["--classifier-epochs", "0"], "argument --classifier-epochs"),
    (["--num-workers", "-1"], "argument --num-workers"),
    (["--val-every", "0"], "argument --val-every"),
    (["--base-features", "zero"], "argument --base-features: 'zero' is not a whole number"),
    (["--out", ""], "argument --out: the output path is empty"),
])
def test_bad_training_options_are_one_error_line(tmp_path, capsys, args, says):
    base = {"--out": str(tmp_path / "model")}
    extra = dict(zip(args[::2], args[1::2]))
    argv = ["train", "--task", "esophagus", "--data", str(tmp_path)]
    for key, value in {**base, **extra}.items():
        argv += [key, value]
    with pytest.raises(SystemExit) as stop:
        code = main(argv)
        raise SystemExit(code)
    assert stop.value.code == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("argv, says", [
    (["synth", "--task", "esophagus", "--cases", "0", "--out", "x"], "argument --cases: 0 is too small"),
    (["synth", "--task", "esophagus", "--cases", "2", "--test-cases", "-1", "--out", "x"], "--test-cases"),
    (["splits", "data", "--folds", "1"], "argument --folds: 1 is too small"),
    (["convert-openkbp", "src", "--out", "x", "--cases", "0"], "argument --cases"),
])
def test_bad_counts_are_one_error_line(capsys, argv, says):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert says in one_error_line(capsys.readouterr().err)


def test_a_bad_option_in_a_real_process_prints_no_traceback(tmp_path):
    done = engine("train", "--task", "esophagus", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                  "--fold", "abc")
    assert done.returncode == 2
    assert "is not a fold number" in one_error_line(done.stderr)
    done = engine("train", "--task", "esophagus", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                  "--folds", "2", "--fold", "7")
    assert done.returncode == 2 and "does not exist with 2 folds" in one_error_line(done.stderr)


# --- output folders ----------------------------------------------------------------------------------

def test_an_empty_out_is_refused_instead_of_writing_into_the_current_folder(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(run_args(toy, ""))
    assert stop.value.code == 2
    assert "output path is empty" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_out_under_an_existing_file_is_refused_before_the_model_runs(toy, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("x")
    loads: list[object] = []
    monkeypatch.setattr(toy["module"].ToyTask, "load_predictor", lambda *a, **k: loads.append(a))
    assert main(run_args(toy, tmp_path / "notes.txt" / "results")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "notes.txt' is a file" in line and loads == []
    assert main(run_args(toy, tmp_path / "notes.txt")) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["train", "evaluate", "batch"])
def test_every_command_refuses_out_under_a_file(toy, tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("x")
    out = str(tmp_path / "notes.txt" / "results")
    data = str(toy["root"] / "data")
    argv = {"train": ["train", "--task", "toy", "--data", data, "--out", out, "--epochs", "1"],
            "evaluate": ["evaluate", "--task", "toy", "--model", str(toy["model"]), "--data", data, "--out", out],
            "batch": run_args(toy, out, toy["root"] / "data" / "imagesTr")}[command]
    assert main(argv) == 2
    assert "notes.txt' is a file" in one_error_line(capsys.readouterr().err)


def test_a_negative_target_spacing_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--task", "esophagus", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
              "--target-spacing", "3", "-1", "1"])
    assert stop.value.code == 2
    assert "argument --target-spacing" in one_error_line(capsys.readouterr().err)


def test_a_second_run_without_overwrite_names_the_option_not_the_python_argument(toy, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(run_args(toy, out)) == 0
    capsys.readouterr()
    assert main(run_args(toy, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--overwrite" in line and "overwrite=True" not in line


def test_outputs_in_lists_only_the_files_this_run_wrote(toy, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    assert main(run_args(toy, out)) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Outputs in")]
    assert len(listed) == 1
    names = listed[0].split(": ", 1)[1].split(", ")
    assert "notes.txt" not in names and "report.json" in names and "gradcam.nii.gz" not in names


# --- batches -----------------------------------------------------------------------------------------

def _batch(toy, tmp_path: Path, good: int, bad: int) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(good):
        os.link(toy["image"], folder / f"good{i}.nii.gz")
    for i in range(bad):
        (folder / f"bad{i}.nii.gz").write_bytes(b"not an image")
    return folder


def _statuses(summary: Path) -> dict[str, str]:
    with summary.open(newline="", encoding="utf-8") as fh:
        return {row["case"]: row["status"] for row in csv.DictReader(fh)}


@pytest.mark.parametrize("good, bad, status", [(0, 2, 1), (1, 1, 1), (2, 0, 0)])
def test_a_batch_exits_1_when_any_case_failed_and_lists_the_failures(toy, tmp_path, capsys, good, bad, status):
    out = tmp_path / "out"
    assert main(run_args(toy, out, _batch(toy, tmp_path, good, bad))) == status
    printed = capsys.readouterr().out
    statuses = _statuses(out / "summary.csv")
    assert statuses == {**{f"good{i}": "ok" for i in range(good)}, **{f"bad{i}": "error" for i in range(bad)}}
    assert f"{good} of {good + bad} case(s) done" in printed
    for i in range(bad):
        assert f"  bad{i}: " in printed
    assert ("failed" in printed) == bool(bad)
