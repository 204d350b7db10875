"""Every phantom task: determinism by seed, valid nnU-Net datasets, the CLI (engine.synth and engine.cli)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine import cli
from engine.data.dataset import RawDataset
from engine.data.validate import validate_dataset
from engine.tasks import builtin_task_names
from engine.synth import SynthError, case_seed, generate_case, generate_dataset

CHANNEL = {"esophagus": "CT", "npc": "T1C", "gtv": "CT", "pet": "PT"}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


SEED = 11


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Per task, written once: a dataset (2 training + 1 test case, seed 11) and its cases made directly."""
    cache: dict[str, tuple[RawDataset, list]] = {}

    def get(task: str) -> tuple[RawDataset, list]:
        if task not in cache:
            ds = generate_dataset(task, tmp_path_factory.mktemp(task) / "ds", cases=2, seed=SEED, test_cases=1)
            cache[task] = ds, [generate_case(task, case_seed(SEED, i)) for i in range(2)]
        return cache[task]

    return get


@pytest.mark.parametrize("task", builtin_task_names())
def test_same_seed_gives_identical_files(task, written, tmp_path):
    a, _ = written(task)
    b = generate_dataset(task, tmp_path / "b", cases=2, seed=SEED, test_cases=1)
    da, db = _digests(a.root), _digests(b.root)
    assert da == db
    expected = {f"imagesTr/{task}_000_0000.nii.gz", f"imagesTr/{task}_001_0000.nii.gz",
                f"labelsTr/{task}_000.nii.gz", f"labelsTr/{task}_001.nii.gz",
                f"imagesTs/{task}_test_000_0000.nii.gz", "dataset.json"}
    assert expected <= set(da)
    assert not any(k.startswith("labelsTr/") and "test" in k for k in da)   # test cases are unlabelled


@pytest.mark.parametrize("task", builtin_task_names())
def test_same_seed_gives_identical_arrays_and_different_seeds_differ(task, written):
    _, (one, _) = written(task)
    two, other = generate_case(task, case_seed(SEED, 0)), generate_case(task, case_seed(SEED + 1, 0))
    assert np.array_equal(one.image.array, two.image.array)
    assert np.array_equal(one.label.array, two.label.array)
    assert one.image.origin == two.image.origin and one.image.spacing == two.image.spacing
    assert one.targets == two.targets
    for name, mask in one.meta["masks"].items():
        assert np.array_equal(mask, two.meta["masks"][name]), name
    assert one.image.shape == other.image.shape
    assert not np.array_equal(one.image.array, other.image.array)
    assert not np.array_equal(one.label.array, other.label.array)


@pytest.mark.parametrize("task", builtin_task_names())
def test_case_does_not_depend_on_dataset_size(task, written, tmp_path):
    full, (direct, _) = written(task)
    single = generate_dataset(task, tmp_path / "one", cases=1, seed=SEED)
    name = f"imagesTr/{task}_000_0000.nii.gz"
    assert _digests(single.root)[name] == _digests(full.root)[name]
    # and it holds what generate_case gives for case_seed(seed, 0), geometry included
    img = single.training[0].load_image()
    assert np.allclose(img.array, direct.image.array)
    assert img.same_geometry(direct.image)


@pytest.mark.parametrize("task", builtin_task_names())
def test_generated_dataset_is_valid(task, written):
    ds, _ = written(task)
    report = validate_dataset(ds.root)
    assert report.ok, report.summary()
    assert report.num_training == 2 and report.num_test == 1
    meta = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": CHANNEL[task]}
    allowed = set(meta["labels"].values())
    assert 0 in allowed and 1 in allowed
    for case in ds.training:
        img = case.load_image()
        lab = case.load_label()
        assert img.same_geometry(lab)
        assert img.shape == lab.shape and img.spacing == lab.spacing and img.origin == lab.origin
        assert np.allclose(img.direction, lab.direction)
        values = set(np.unique(lab.array).astype(int).tolist())
        assert values <= allowed, (case.case_id, values)
        assert 1 in values, f"{case.case_id} has no tumour voxel"
        assert np.isfinite(img.array).all() and img.array.dtype == np.float32


@pytest.mark.parametrize("task", builtin_task_names())
def test_targets_written_as_declared(task, written):
    ds, direct = written(task)
    stages_csv = ds.root / "stages.csv"
    if task == "gtv":
        assert not stages_csv.exists()
        return
    rows = list(csv.DictReader(stages_csv.open()))
    assert [r["case"] for r in rows] == [f"{task}_{i:03d}" for i in range(2)]   # no row for the test case
    for r, case, made in zip(rows, ds.training, direct):
        expected = made.targets
        if task == "pet":
            assert r["t_stage"] == "" and r["outcome"] in ("0", "1") and r["pathology"] in ("esophageal", "lung")
            assert int(r["outcome"]) == expected.outcome and r["pathology"] == expected.pathology
            assert case.targets.outcome == expected.outcome and case.targets.pathology == expected.pathology
        else:
            assert r["t_stage"] in ("T1", "T2", "T3", "T4") and r["t_stage"] == expected.t_stage
            assert case.stage == expected.t_stage


def test_bad_requests_raise_synth_error(tmp_path):
    with pytest.raises(SynthError, match="Unknown synthetic task"):
        generate_case("brain", 0)
    with pytest.raises(SynthError, match="preset"):
        generate_case("pet", 0, preset="huge")
    for seed in (-1, 1.5, True):
        with pytest.raises(SynthError, match="Seed"):
            generate_case("pet", seed)  # type: ignore[arg-type]
    with pytest.raises(SynthError, match="cases"):
        generate_dataset("pet", tmp_path / "x", cases=0)


def test_cli_synth_writes_a_valid_pet_dataset(tmp_path, capsys):
    out = tmp_path / "pet"
    assert cli.main(["synth", "--task", "pet", "--cases", "2", "--seed", "3", "--out", str(out)]) == 0
    assert "Wrote 2 training" in capsys.readouterr().out
    ds = RawDataset.load(out)
    assert [c.case_id for c in ds.training] == ["pet_000", "pet_001"]
    assert all(c.targets.outcome in (0, 1) and c.targets.pathology for c in ds.training)
    assert cli.main(["validate", str(out)]) == 0
    # same command, same seed: same files
    again = tmp_path / "again"
    assert cli.main(["synth", "--task", "pet", "--cases", "2", "--seed", "3", "--out", str(again)]) == 0
    assert _digests(out) == _digests(again)


def test_cli_synth_errors(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["synth", "--task", "pet", "--cases", "1", "--seed", "-1", "--out", str(out)]) == 2
    assert "Seed must be a non-negative integer" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(SystemExit) as exc:  # range-checked by the parser: one error line, status 2
        cli.main(["synth", "--task", "pet", "--cases", "0", "--out", str(out)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["synth", "--task", "pet", "--cases", "1", "--preset", "huge", "--out", str(out)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["synth", "--task", "liver", "--cases", "1", "--out", str(out)])
    assert exc.value.code == 2
    # an existing dataset is never overwritten without --overwrite
    assert cli.main(["synth", "--task", "npc", "--cases", "1", "--out", str(out)]) == 0
    before = _digests(out)
    assert cli.main(["synth", "--task", "npc", "--cases", "1", "--seed", "5", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _digests(out) == before
    assert cli.main(["synth", "--task", "npc", "--cases", "1", "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert _digests(out) != before


def test_generator_options_reach_the_task_and_bad_ones_write_nothing(tmp_path):
    ds = generate_dataset("esophagus", tmp_path / "iso", cases=1, seed=SEED,
                          generator_options={"enhancement_scale": 0.0})
    direct = generate_case("esophagus", case_seed(SEED, 0))
    image = ds.training[0].load_image().array
    tumour = direct.label.array == 1
    assert np.array_equal(ds.training[0].load_label().array, direct.label.array)
    assert image[tumour].mean() < direct.image.array[tumour].mean() - 5.0  # the enhancement is gone
    for options, match in (({"enhancement_scale": -2.0}, "enhancement_scale"),
                           ({"contrast": 2}, "no option")):
        with pytest.raises(SynthError, match=match):
            generate_dataset("esophagus", tmp_path / "bad", cases=1, seed=SEED, generator_options=options)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(SynthError, match="no option"):
        generate_dataset("pet", tmp_path / "bad", cases=1, generator_options={"enhancement_scale": 1.0})
