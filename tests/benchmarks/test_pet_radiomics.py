"""benchmarks/pet_radiomics.py: IBSI features of the labelled tumour + logistic regression on PET phantoms."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("pet_radiomics", REPO / "benchmarks" / "pet_radiomics.py")
radiomics = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = radiomics
SPEC.loader.exec_module(radiomics)


def test_numpy_features_of_a_cube_are_known_by_construction():
    suv = np.zeros((12, 12, 12))
    mask = np.zeros(suv.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    suv[mask] = 4.0
    suv[3, 3, 3] = 8.0
    f = radiomics.numpy_features(suv, mask, (2.0, 2.0, 2.0))
    volume, area = 216 * 8.0, 6 * 36 * 4.0
    assert math.exp(f["morph_log_volume"]) == pytest.approx(volume)
    assert f["morph_area"] == pytest.approx(area)
    assert f["morph_sphericity"] == pytest.approx((36 * math.pi * volume ** 2) ** (1 / 3) / area)
    assert f["stat_max"] == 8.0 and f["stat_median"] == 4.0
    assert f["stat_mean"] == pytest.approx((215 * 4 + 8) / 216)
    assert f["stat_skew"] > 0   # one hot voxel: right-skewed


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from engine.synth import generate_dataset

    root = tmp_path_factory.mktemp("pet_radiomics")
    generate_dataset("pet", root / "train", cases=12, seed=31, preset="small")
    generate_dataset("pet", root / "test", cases=6, seed=32, preset="small")
    return root


def test_benchmark_writes_cross_validated_and_test_aucs(datasets, tmp_path, capsys):
    test_ids = sorted(p.name[:-len("_0000.nii.gz")] for p in (datasets / "test" / "imagesTr").iterdir())
    net_cases = tmp_path / "cases.csv"
    with open(net_cases, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "outcome_probability"])
        writer.writerows([[case, 0.5] for case in test_ids])
    out = tmp_path / "out"
    assert radiomics.main(["--train", str(datasets / "train"), "--test", str(datasets / "test"), "--out", str(out),
                           "--features", "numpy", "--network-cases", str(net_cases)]) == 0
    result = json.loads((out / "pet_radiomics.json").read_text())
    assert result["cross_validation"]["n"] == 12 and result["test"]["n"] == 6
    assert 0.0 <= result["test"]["auc"] <= 1.0 and result["n_features"] == 15
    assert result["network"]["auc"] == pytest.approx(0.5)   # constant scores: chance
    with open(out / "features_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == test_ids and "stat_mean" in rows[0]
    assert "| multi-task network, test phantoms (n = 6) |" in capsys.readouterr().out


def test_mirp_features_when_mirp_is_installed(datasets):
    pytest.importorskip("mirp", reason="mirp is not installed (optional extra 'radiomics')")
    from engine.data.dataset import RawDataset

    case = RawDataset.load(datasets / "test").training[0]
    features = radiomics.case_features(case, "mirp")
    image = case.load_image()
    mask = case.load_label(reference=image).array > 0
    assert features["stat_max"] == pytest.approx(float(image.array[mask].max()), rel=1e-4)
    assert any(k.startswith("cm_") for k in features) and any(k.startswith("morph_") for k in features)
