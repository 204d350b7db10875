"""A task written outside the engine (``tests/plugins/toy_task.py``) is a full citizen: registered
from the tests, it is planned, synthesised, trained, run and evaluated through the command line, and a
child process finds it through ``$ONCOSTAGING_TASKS``, with no engine file naming it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import EngineError
from engine.tasks import TASKS_ENV, Task, get_task, register_task, task_names, unregister_task

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"


@pytest.fixture
def toy():
    import toy_task

    register_task(toy_task.TASK)
    yield toy_task
    unregister_task("toy")


@pytest.fixture
def toy_dataset(toy, tmp_path):
    out = tmp_path / "data"
    assert (
        main(
            ["synth", "--task", "toy", "--cases", "4", "--test-cases", "1", "--seed", "3", "--out", str(out)]
        )
        == 0
    )
    return out


@pytest.fixture
def toy_model(toy_dataset, tmp_path):
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--task",
                "toy",
                "--data",
                str(toy_dataset),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--seed",
                "0",
                "--learning-rate",
                "0.01",
                "--progress",
                "json",
            ]
        )
        == 0
    )
    return out


def test_no_engine_file_names_the_toy_task():
    for path in (REPO / "engine").rglob("*.py"):
        assert "toy_task" not in path.read_text(encoding="utf-8"), path


def test_registered_task_is_listed_and_looked_up(toy, capsys):
    assert "toy" in task_names() and get_task("toy") is toy.TASK
    assert main(["tasks", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "toy")
    assert row["labels"] == {"lesion": 1, "organ": 2} and row["stages"] == ["low", "high"]
    assert row["pipeline"] is True and row["phantoms"] is True and row["models"] == []


def test_a_second_task_of_the_same_name_is_refused(toy):
    with pytest.raises(EngineError, match="already registered"):
        register_task(Task(name="toy", title="other", modality="CT", labels=()))
    with pytest.raises(EngineError, match="already registered"):
        register_task(Task(name="esophagus", title="other", modality="CT", labels=()))


def test_synth_and_validate_against_the_task(toy_dataset, capsys):
    description = json.loads((toy_dataset / "dataset.json").read_text(encoding="utf-8"))
    assert description["labels"] == {"background": 0, "lesion": 1, "organ": 2}
    assert len(list((toy_dataset / "imagesTr").iterdir())) == 4
    assert main(["validate", str(toy_dataset), "--task", "toy"]) == 0
    assert main(["validate", str(toy_dataset), "--task", "esophagus"]) == 1  # no 'EC' label, stages differ
    out = capsys.readouterr().out
    assert "needs a 'EC' label" in out and "are not among task 'esophagus''s" in out


def test_plan_follows_the_tasks_plan_defaults(toy_dataset, tmp_path):
    assert main(["plan", str(toy_dataset), "--task", "toy", "--out", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    assert plan["task"] == "toy" and list(plan["configurations"]) == ["3d_fullres"]  # no cascade declared


def test_train_run_and_evaluate_through_the_cli(toy_model, toy_dataset, tmp_path, capsys):
    manifest = json.loads((toy_model / "model.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "toy" and manifest["stages"] == ["low", "high"]
    assert manifest["metrics"]["training"]["iterations"] == 4  # one step per case, one epoch
    assert main(["models", "verify", str(toy_model), "--task", "toy"]) == 0

    image = next((toy_dataset / "imagesTs").iterdir())
    out = tmp_path / "run"
    assert (
        main(["run", "--task", "toy", "--input", str(image), "--out", str(out), "--model", str(toy_model)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Predicted stage:" in printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["task"] == "toy" and report["predicted_stage"] in ("low", "high")
    assert sum(report["stage_probabilities"].values()) == pytest.approx(1.0)
    assert set(report["volumes_cm3"]) == {"lesion", "organ"}
    assert {p.name for p in out.iterdir()} == {
        "segmentation.nii.gz",
        "segmentation.seg.nrrd",
        "gradcam.nii.gz",
        "overview.png",
        "report.json",
    }

    again = tmp_path / "run-by-model"  # the bundle's task picks the implementation when --task is left out
    assert main(["run", "--input", str(image), "--out", str(again), "--model", str(toy_model)]) == 0
    assert (
        json.loads((again / "report.json").read_text(encoding="utf-8"))["stage_probabilities"]
        == report["stage_probabilities"]
    )

    batch = tmp_path / "batch"
    assert (
        main(
            [
                "run",
                "--task",
                "toy",
                "--input",
                str(toy_dataset / "imagesTr"),
                "--out",
                str(batch),
                "--model",
                str(toy_model),
                "--no-gradcam",
            ]
        )
        == 0
    )
    with (batch / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(abs(float(r["p_low"]) + float(r["p_high"]) - 1) < 1e-5 for r in rows)

    evaluation = tmp_path / "evaluation"
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--task",
                "toy",
                "--data",
                str(toy_dataset),
                "--model",
                str(toy_model),
                "--out",
                str(evaluation),
            ]
        )
        == 0
    )
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["metadata"]["task"] == "toy" and metrics["n_cases"] == 4
    assert [s["name"] for s in metrics["structures"]] == ["lesion", "organ"]
    assert metrics["stage_names"] == ["low", "high"]
    assert all(0.0 <= s["dice"]["mean"] <= 1.0 for s in metrics["structures"])
    assert "lesion" in (evaluation / "metrics.md").read_text(encoding="utf-8")
    assert "# Evaluation report" in capsys.readouterr().out  # the command prints the report it wrote


def test_training_is_reproducible_by_seed(toy_dataset, tmp_path):
    from safetensors.numpy import load_file

    weights = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert (
            main(["train", "--task", "toy", "--data", str(toy_dataset), "--out", str(out), "--seed", "7"])
            == 0
        )
        weights.append(load_file(str(out / "network.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_child_process_finds_the_plugin_through_the_environment(tmp_path):
    env = {
        **os.environ,
        TASKS_ENV: "toy_task:TASK",
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    listed = subprocess.run(
        [sys.executable, "-m", "engine", "tasks", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "toy" in [r["name"] for r in json.loads(listed.stdout)]
    synth = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "synth",
            "--task",
            "toy",
            "--cases",
            "1",
            "--out",
            str(tmp_path / "d"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert synth.returncode == 0, synth.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "tasks"],
        env={**env, TASKS_ENV: "no_such_module:TASK"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "no_such_module" in bad.stderr
