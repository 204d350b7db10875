"""The shipped GTVSeg model (trained on the OpenKBP patients' PTV70) on real scans: a validation patient
of the fixed split it never trained on, and the LUNG1-001 DICOM series (out of its domain: a test of the
path from a DICOM folder to outputs in the series' own geometry, not of accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.io.image import read_image
from tests.conftest import shared_data

MODELS = Path(__file__).resolve().parents[3] / "models"
SHIPPED = sorted(MODELS.glob("gtv-*"))

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def model() -> Path:
    if not SHIPPED:
        pytest.skip("no GTVSeg model is shipped in models/")
    return SHIPPED[-1]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(1, np.sum(a) + np.sum(b)))


def test_a_validation_patient_is_segmented_in_its_own_geometry(model, tmp_path):
    from engine.tasks.gtv.openkbp import SPLIT_FILE, split_cases

    patient = split_cases(SPLIT_FILE, "val")[0]  # e.g. "openkbp_12": patient pt_12, never trained on
    source = shared_data("openkbp", "train", f"pt_{patient.rsplit('_', 1)[-1]}")
    out = tmp_path / "run"
    assert main(["run", "--task", "gtv", "--input", str(source / "ct.nii.gz"), "--out", str(out),
                 "--model", str(model), "--device", "cpu"]) == 0
    ct = read_image(source / "ct.nii.gz")
    labels = read_image(out / "segmentation.nii.gz")
    assert labels.shape == ct.shape and np.allclose(labels.spacing, ct.spacing)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert len(report["slice_probabilities"]) == ct.shape[0]
    reference = read_image(source / "labels.nii.gz").array.astype(np.int64) == 10  # PTV70
    predicted = labels.array.astype(np.int64) == 1
    assert reference.any() and predicted.any()
    assert _dice(predicted, reference) > 0.3  # a real overlap with the clinical target, not chance


def test_lung1_dicom_series_is_segmented_in_the_series_geometry(model, tmp_path):
    series = shared_data("nsclc_lung1_001", "ct_dicom")
    out = tmp_path / "lung1"
    assert main(["run", "--task", "gtv", "--input", str(series), "--out", str(out), "--model", str(model),
                 "--device", "cpu", "--no-gradcam"]) == 0
    ct = read_image(series)
    labels = read_image(out / "segmentation.nii.gz")
    assert labels.shape == ct.shape == (134, 512, 512)
    assert np.allclose(labels.origin, ct.origin) and np.allclose(labels.direction, ct.direction)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert len(report["slice_probabilities"]) == 134 and set(report["volumes_cm3"]) == {"GTV"}
