"""Dataset layout round trip, stages.csv, validation reporting every problem, stratified splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.data.dataset import CaseTargets, RawDataset, read_stages_csv, write_stages_csv
from engine.data.splits import load_splits, make_splits, save_splits
from engine.data.validate import validate_dataset
from engine.errors import DatasetError
from engine.io.image import Image, write_image
from tests.conftest import write_blob_dataset


def test_written_dataset_loads_in_nnunet_layout(blob_dataset):
    ds = RawDataset.load(blob_dataset)
    assert (blob_dataset / "imagesTr" / "case_000_0000.nii.gz").is_file()
    assert (blob_dataset / "labelsTr" / "case_000.nii.gz").is_file()
    meta = json.loads((blob_dataset / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 6 and meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert [c.case_id for c in ds.training] == [f"case_{i:03d}" for i in range(6)]
    assert [c.stage for c in ds.training] == ["T1", "T2", "T3", "T4", "T1", "T2"]
    assert ds.stages == ["T1", "T2", "T3", "T4"]
    img = ds.training[0].load_image()
    lab = ds.training[0].load_label(reference=img)
    assert set(np.unique(lab.array)) == {0, 1, 2}


def test_stages_csv_round_trip_with_outcome(tmp_path):
    targets = {"a": CaseTargets("T2", 1, "SCC"), "b": CaseTargets("T4", 0, None)}
    write_stages_csv(tmp_path / "s.csv", targets)
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines()[0] == "case,t_stage,outcome,pathology"
    assert read_stages_csv(tmp_path / "s.csv") == targets


def test_stages_csv_errors(tmp_path):
    (tmp_path / "s.csv").write_text("case,stage\na,T1\n")
    with pytest.raises(DatasetError, match="case,t_stage"):
        read_stages_csv(tmp_path / "s.csv")
    (tmp_path / "s.csv").write_text("case,t_stage\na,T1\na,T2\n")
    with pytest.raises(DatasetError, match="twice"):
        read_stages_csv(tmp_path / "s.csv")


def test_writer_refuses_non_empty_folder(blob_dataset):
    with pytest.raises(DatasetError, match="not empty"):
        write_blob_dataset(blob_dataset)


def test_clean_dataset_validates(blob_dataset):
    report = validate_dataset(blob_dataset)
    assert report.ok, report.summary()
    assert report.stage_counts == {"T1": 2, "T2": 2, "T3": 1, "T4": 1}
    assert report.label_voxel_counts["EC"] > 0


def test_validation_reports_all_problems_at_once(blob_dataset):
    root = blob_dataset
    (root / "labelsTr" / "case_001.nii.gz").unlink()                      # missing label
    img = RawDataset.load(root).training[2].load_image()
    shifted = Image(np.zeros(img.shape, np.uint8), img.spacing, (0.0, 0.0, 0.0), img.direction)
    shifted.array[3, 3, 3] = 1
    write_image(shifted, root / "labelsTr" / "case_002.nii.gz")            # geometry mismatch
    bad = RawDataset.load(root).training[3].load_label()
    bad.array[0, 0, 0] = 7
    write_image(bad, root / "labelsTr" / "case_003.nii.gz")                # unknown label value
    lines = (root / "stages.csv").read_text(encoding="utf-8").splitlines()
    (root / "stages.csv").write_text("\n".join(l for l in lines if not l.startswith("case_004")) + "\n")
    (root / "imagesTr" / "case_005_0000.nii.gz").write_bytes(b"garbage")  # corrupt image
    report = validate_dataset(root)
    text = report.summary()
    assert not report.ok
    by_case = {p.case for p in report.problems}
    assert {"case_001", "case_002", "case_003", "case_004", "case_005"} <= by_case, text
    assert "label file missing" in text
    assert "geometry mismatch" in text
    assert "[7]" in text
    assert "no T-stage" in text
    assert "corrupt" in text


def test_validation_of_non_dataset(tmp_path):
    report = validate_dataset(tmp_path)
    assert not report.ok and "dataset.json" in report.summary()


def test_stratified_splits_keep_stage_proportions(tmp_path):
    ids = [f"c{i:02d}" for i in range(40)]
    stages = ["T1"] * 8 + ["T2"] * 8 + ["T3"] * 20 + ["T4"] * 4
    splits = make_splits(ids, stages, folds=4, seed=1)
    all_val = [c for s in splits for c in s["val"]]
    assert sorted(all_val) == sorted(ids)                      # every case validated exactly once
    stage_of = dict(zip(ids, stages))
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        counts = {t: sum(stage_of[c] == t for c in s["val"]) for t in ("T1", "T2", "T3", "T4")}
        assert counts == {"T1": 2, "T2": 2, "T3": 5, "T4": 1}
    save_splits(splits, tmp_path / "splits.json")
    assert load_splits(tmp_path / "splits.json") == splits
    assert make_splits(ids, stages, folds=4, seed=1) == splits  # deterministic


def test_splits_need_enough_cases():
    with pytest.raises(DatasetError, match="folds"):
        make_splits(["a", "b"], None, folds=5)
