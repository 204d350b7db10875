"""The shipped EsophagusStaging demo model gives exactly the outputs it gave when it was released.

Refactoring the engine must not change what a user gets: the demo case (the phantom ``make demo``
stages) is segmented and staged with the shipped bundle on the CPU, and the stage, the four
probabilities (to 1e-5), the label map (sha256 of its voxels) and the Grad-CAM summary are compared
with the values recorded for model 0.6.0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from engine.demo import DEMO_CASE_SEED
from engine.registry import load_bundle

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "esophagus-demo-0.6.0"
PROBABILITIES = {
    "T1": 0.3094198102150877,
    "T2": 0.41695778287547636,
    "T3": 0.26751595580514004,
    "T4": 0.006106451104295862,
}
LABEL_SHA256 = "0ebf16407b591d340dee94618925faa280958dad3047033abcbb676d7b703d87"
LABEL_VOXELS = {0: 542179, 1: 476, 2: 5988, 3: 5546, 4: 139, 5: 35496}
GRADCAM_MEAN = 0.02186640165746212


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    from engine.io.image import write_image
    from engine.synth import generate_case
    from engine.tasks import get_task

    if not (BUNDLE / "model.json").is_file():
        pytest.skip("the shipped demo model is not in this checkout")
    case = generate_case("esophagus", DEMO_CASE_SEED, "small")
    root = tmp_path_factory.mktemp("demo")
    write_image(case.channels[0], root / "ct.nii.gz")
    task = get_task("esophagus")
    return task.segment(root / "ct.nii.gz", root / "out", load_bundle(BUNDLE), device="cpu")


def test_demo_stage_and_probabilities_are_unchanged(demo_result):
    assert demo_result.report["predicted_stage"] == "T2"
    got = demo_result.report["stage_probabilities"]
    assert list(got) == list(PROBABILITIES)
    for stage, expected in PROBABILITIES.items():
        assert got[stage] == pytest.approx(expected, abs=1e-5), stage


def test_demo_segmentation_is_voxel_identical(demo_result):
    labels = np.ascontiguousarray(demo_result.prediction.labels.array).astype(np.uint8)
    values, counts = np.unique(labels, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == LABEL_VOXELS
    assert hashlib.sha256(labels.tobytes()).hexdigest() == LABEL_SHA256


def test_demo_gradcam_is_unchanged(demo_result):
    cam = demo_result.prediction.gradcam.array
    assert cam.shape == demo_result.prediction.labels.array.shape
    assert float(cam.max()) == pytest.approx(1.0)
    assert float(cam.mean()) == pytest.approx(GRADCAM_MEAN, abs=1e-5)
