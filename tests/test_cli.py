"""The command line: every subcommand has --help, user errors exit 2 with one clear line, and the
foundation commands (validate, plan, splits, models) do what the README says."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from engine.cli import build_parser, main
from engine.registry.bundle import DEMO_INTENDED_USE, save_bundle

COMMANDS = ["tasks", "validate", "synth", "plan", "splits", "convert-openkbp", "train", "run", "evaluate", "models"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_tta_and_device_choices_are_the_task_layers_with_all_and_auto_as_default():
    from engine.tasks import DEVICE_CHOICES, TTA_MODES

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name in ("run", "evaluate"):
        options = {o.dest: o for o in commands.choices[name]._actions}
        assert tuple(options["tta"].choices) == TTA_MODES
        assert tuple(options["device"].choices) == DEVICE_CHOICES
    run = build_parser().parse_args(["run", "--task", "esophagus", "--input", "ct.nii.gz", "--out", "o"])
    evaluate = build_parser().parse_args(["evaluate", "--task", "esophagus", "--data", "d", "--out", "o"])
    assert run.tta == evaluate.tta == "all"
    assert run.device == evaluate.device == "auto"


def test_task_options_are_added_only_for_the_named_task(capsys):
    train = ["train", "--data", "d", "--out", "o"]
    parsed = build_parser().parse_args([*train, "--task", "esophagus", "--no-krt", "--lowres-epochs", "3"])
    assert parsed.no_krt is True and parsed.lowres_epochs == 3
    with pytest.raises(SystemExit):  # an esophagus option is not a generic one
        build_parser().parse_args([*train, "--task=npc", "--no-krt"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([*train, "--task", "nosuchtask"])
    assert "invalid choice" in capsys.readouterr().err


def test_tasks_lists_every_registered_task_with_its_declaration(capsys):
    from engine.tasks import task_names

    assert main(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == task_names()
    assert rows["esophagus"]["modality"] == "CT" and rows["esophagus"]["pipeline"] is True
    assert rows["esophagus"]["labels"] == {"EC": 1, "aorta": 2, "esophagus": 3, "lymph node": 4, "pericardium": 5}
    assert rows["esophagus"]["stages"] == ["T1", "T2", "T3", "T4"]
    assert rows["gtv"]["pipeline"] is True and rows["gtv"]["stages"] == []
    assert rows["pet"]["pipeline"] is True and rows["pet"]["modality"] == "PT"
    assert rows["npc"]["modality"] == "MR"
    assert all(r["models"] == [] for r in rows.values())  # the tests' model folders are empty


def test_a_task_without_a_pipeline_says_which_tasks_have_one(tmp_path, capsys):
    from engine.tasks import Label, Task, register_task, unregister_task

    register_task(Task(name="declared", title="A declaration only", modality="CT",
                       labels=(Label("lesion", 1, (200, 0, 0)),)), replace=True)
    try:
        assert main(["train", "--task", "declared", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    finally:
        unregister_task("declared")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no training pipeline yet" in err[0] and "esophagus" in err[0]


def test_validate_exit_codes_and_json(blob_dataset, capsys):
    assert main(["validate", str(blob_dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    (blob_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    (blob_dataset / "imagesTr" / "case_002_0000.nii.gz").write_bytes(b"broken")
    assert main(["validate", str(blob_dataset)]) == 1
    out = capsys.readouterr().out
    assert "case_001" in out and "case_002" in out  # all problems at once


def test_plan_writes_json_and_refuses_to_overwrite(blob_dataset, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(blob_dataset), "--out", str(out)]) == 0
    plan = json.loads(out.read_text(encoding="utf-8"))
    assert plan["task"] == "esophagus" and plan["krt_box_size"] and plan["stage_loss_weights"]
    assert "3d_fullres" in plan["configurations"] and "3d_lowres" in plan["configurations"]
    before = out.read_text(encoding="utf-8")
    assert main(["plan", str(blob_dataset), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == before


def test_splits_are_stratified_and_saved(blob_dataset, capsys):
    assert main(["splits", str(blob_dataset), "--folds", "2"]) == 0
    splits = json.loads((blob_dataset / "splits.json").read_text(encoding="utf-8"))
    assert len(splits) == 2
    cases = sorted(c for fold in splits for c in fold["val"])
    assert cases == [f"case_{i:03d}" for i in range(6)]


def test_models_list_import_verify_export(tmp_path, capsys):
    bundle = save_bundle(tmp_path / "b", id="tiny", name="Tiny", version="1.2.3", task="esophagus",
                         architecture={"name": "x"}, plan={}, labels=[{"name": "EC", "value": 1,
                                                                      "color": [255, 0, 0]}],
                         stages=["T1", "T2", "T3", "T4"], modality="CT", training={}, metrics={},
                         intended_use=DEMO_INTENDED_USE, weights={"w": {"a": torch.ones(3)}})
    zip_path = tmp_path / "tiny.zip"
    assert main(["models", "export", str(bundle.path), str(zip_path)]) == 0
    assert main(["models", "import", str(zip_path)]) == 0
    assert main(["models", "verify", str(zip_path), "--task", "esophagus"]) == 0
    assert main(["models", "verify", str(zip_path), "--task", "npc"]) == 2
    capsys.readouterr()
    assert main(["models", "list", "--task", "esophagus"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "--task", "esophagus", "--input", str(tmp_path / "missing.nii.gz"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    assert main(["train", "--task", "npc", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
