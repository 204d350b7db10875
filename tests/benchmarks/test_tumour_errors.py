"""benchmarks/tumour_errors.py: the tumour error split and the located-intensity bound on hand-made cases."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("tumour_errors", REPO / "benchmarks" / "tumour_errors.py")
errors = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = errors
SPEC.loader.exec_module(errors)

LABELS = {"background": 0, "EC": 1, "aorta": 2, "esophagus": 3, "lymph node": 4, "pericardium": 5}
DEMO_MODEL = REPO / "models" / "esophagus-demo-0.6.0"


def _wall_with_tumour(shape=(9, 9, 9)) -> np.ndarray:
    """Reference: a 3×3×3 tumour in the middle of a block of esophageal wall (label 3)."""
    ref = np.full(shape, LABELS["esophagus"], np.uint8)
    ref[3:6, 3:6, 3:6] = LABELS["EC"]
    return ref


def test_over_segmentation_into_the_wall_is_split_by_kind():
    ref = _wall_with_tumour()
    pred = ref.copy()
    pred[2:7, 2:7, 2:7] = LABELS["EC"]  # the 5×5×5 block: 27 true, 98 wall voxels wrongly called tumour
    s = errors.tumour_error_scores(pred, ref, LABELS)
    assert s["dice"] == pytest.approx(2 * 27 / (2 * 27 + 98))
    assert s["dice_without_fp"] == 1.0 and s["dice_without_fn"] == pytest.approx(s["dice"])
    assert (s["pred_voxels"], s["ref_voxels"]) == (125, 27)
    assert s["fp_by_reference"]["esophagus"] == pytest.approx(98 / 27)
    assert s["fp_by_reference"]["aorta"] == 0.0
    # of the 98 shell voxels, those sharing a face with the tumour (9 per face) are one step from its surface;
    # the shell's edges and corners are not
    assert s["errors_near_surface"] == pytest.approx(6 * 9 / 98)


def test_a_missed_tumour_and_a_far_false_positive():
    ref = _wall_with_tumour((9, 9, 20))
    pred = np.where(ref == LABELS["EC"], LABELS["esophagus"], ref).astype(np.uint8)
    pred[0, 0, 15:19] = LABELS["EC"]  # 4 voxels far from the tumour
    s = errors.tumour_error_scores(pred, ref, LABELS)
    assert s["dice"] == 0.0 and s["dice_without_fp"] == 0.0
    assert s["dice_without_fn"] == pytest.approx(2 * 27 / (2 * 27 + 4))
    assert s["fn_by_prediction"]["esophagus"] == 1.0
    assert s["errors_near_surface"] == pytest.approx(27 / 31)  # all misses are near, the 4 far voxels are not


def test_best_threshold_dice_by_hand():
    values = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    truth = np.array([1, 1, 0, 1, 0], bool)
    # top 1..5: 2/4, 4/5, 4/6, 6/7, 6/8 -> the best cut keeps the four brightest
    assert errors.best_threshold_dice(values, truth, 3) == pytest.approx(6 / 7)
    # ties cannot be split by a threshold: both or neither
    tied = errors.best_threshold_dice(np.array([1.0, 1.0]), np.array([True, False]), 1)
    assert tied == pytest.approx(2 / 3)
    # reference voxels outside the scored region still count in the denominator
    outside = errors.best_threshold_dice(np.array([2.0, 1.0]), np.array([True, False]), 2)
    assert outside == pytest.approx(2 / 3)
    assert errors.best_threshold_dice(np.array([]), np.array([], bool), 3) == 0.0


def test_intensity_bound_reads_a_brighter_tumour_and_ignores_lumen_air():
    ref = _wall_with_tumour()
    image = np.where(ref == LABELS["EC"], 60.0, 40.0)
    image[3:6, 3:6, 0:3] = -900.0  # lumen air (labelled esophagus) against one face of the tumour
    bound = errors.located_intensity_bound(image, ref, (1.0, 1.0, 1.0), LABELS, (0.0, 1.0))
    assert bound["0"] == 1.0
    # smoothed within soft tissue only: the air does not darken the tumour below the wall, as a plain
    # Gaussian would
    assert bound["1"] == 1.0
    plain = ndimage.gaussian_filter(image, 1.0)
    assert plain[ref == LABELS["EC"]].min() < plain[(ref == LABELS["esophagus"]) & (image > -300)].max()


def test_intensity_bound_of_an_invisible_tumour_is_all_or_nothing():
    ref = _wall_with_tumour()
    image = np.full(ref.shape, 40.0)  # tumour iso-dense with the wall
    bound = errors.located_intensity_bound(image, ref, (1.0, 1.0, 1.0), LABELS, (0.0,), region_voxels=1)
    region = 5 ** 3  # the tumour dilated by one voxel (3×3×3 structuring element), all esophagus
    assert bound["0"] == pytest.approx(2 * 27 / (region + 27))


def test_summary_means_per_stage_and_markdown():
    rows = [{"case_id": "a", "stage": "T1", "intensity_bound": {"0": 0.4}},
            {"case_id": "b", "stage": "T1", "intensity_bound": {"0": 0.6}},
            {"case_id": "c", "stage": "T3", "intensity_bound": {"0": 0.9}}]
    summary = errors.summarise(rows)
    assert summary["T1"]["n"] == 2 and summary["T1"]["bound_0"] == pytest.approx(0.5)
    assert summary["all"]["bound_0"] == pytest.approx((0.4 + 0.6 + 0.9) / 3)
    table = errors.markdown(summary, ["0"])
    assert "| T1 (2) | 0.500 |" in table and "| **all** (3) |" in table


def _phantoms(tmp_path: Path) -> Path:
    from engine.synth import generate_dataset

    generate_dataset("esophagus", tmp_path / "data", cases=2, seed=2000)
    return tmp_path / "data"


@pytest.mark.skipif(not (DEMO_MODEL / "model.json").exists(),
                    reason="the shipped demo model is not in this checkout")
def test_end_to_end_with_the_demo_model_and_without_a_model(tmp_path, capsys):
    data = _phantoms(tmp_path)
    assert errors.main([str(data), "--out", str(tmp_path / "bound"), "--no-model"]) == 0
    assert errors.main([str(data), "--out", str(tmp_path / "model"), "--model", str(DEMO_MODEL),
                        "--tta", "none"]) == 0
    bound = json.loads((tmp_path / "bound" / "tumour_errors.json").read_text(encoding="utf-8"))
    full = json.loads((tmp_path / "model" / "tumour_errors.json").read_text(encoding="utf-8"))
    assert [c["case_id"] for c in full["cases"]] == ["esophagus_000", "esophagus_001"]
    # the bound does not depend on the model
    assert [c["intensity_bound"] for c in full["cases"]] == [c["intensity_bound"] for c in bound["cases"]]
    for case in full["cases"]:
        s = case["scores"]
        assert 0.0 <= s["dice"] <= min(s["dice_without_fp"], s["dice_without_fn"]) <= 1.0
        assert s["ref_voxels"] > 0
    mean_dice = np.mean([c["scores"]["dice"] for c in full["cases"]])
    assert full["summary"]["all"]["dice"] == pytest.approx(mean_dice)
    assert "EC Dice" in (tmp_path / "model" / "tumour_errors.md").read_text(encoding="utf-8")
    assert "EC Dice" not in (tmp_path / "bound" / "tumour_errors.md").read_text(encoding="utf-8")


def test_refuses_unknown_cases_and_a_missing_model_choice(tmp_path):
    data = _phantoms(tmp_path)
    listed = tmp_path / "cases.txt"
    listed.write_text("esophagus_000 nobody_7\n")
    with pytest.raises(SystemExit, match="nobody_7"):
        errors.main([str(data), "--out", str(tmp_path / "o"), "--no-model", "--cases", str(listed)])
    with pytest.raises(SystemExit):
        errors.main([str(data), "--out", str(tmp_path / "o")])  # neither --model nor --no-model
    assert not (tmp_path / "o" / "tumour_errors.json").exists()


def test_refuses_a_label_map_off_its_images_grid(tmp_path):
    import SimpleITK as sitk

    data = _phantoms(tmp_path)
    label_file = data / "labelsTr" / "esophagus_001.nii.gz"
    label = sitk.ReadImage(str(label_file))
    label.SetOrigin([c + 5.0 for c in label.GetOrigin()])  # same shape, shifted 5 mm
    sitk.WriteImage(label, str(label_file))
    with pytest.raises(SystemExit, match="esophagus_001.*geometry"):
        errors.main([str(data), "--out", str(tmp_path / "o"), "--no-model"])
    assert not (tmp_path / "o").exists()  # nothing written, not even the folder
