"""EsophagusPredictor on a tiny trained model: geometry, probabilities, volumes, Grad-CAM, mirroring, KRT crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.inference.krt import bbox_centre, crop_box, krt_box
from engine.tasks.esophagus import predictor as predictor_module
from engine.tasks.esophagus.predictor import INFERENCE_STEPS



def test_prediction_is_in_the_original_geometry(tiny):
    case = tiny["dataset"].training[0]
    image = case.load_image()
    pred = tiny["predictor"].predict(image)
    for out in (pred.labels, pred.gradcam):
        assert out.shape == image.shape
        assert out.spacing == image.spacing and out.origin == image.origin
        np.testing.assert_array_equal(out.direction, image.direction)
    assert set(np.unique(pred.labels.array)) <= {0, 1, 2, 3, 4, 5}
    probs = np.array(list(pred.stage_probabilities.values()))
    assert list(pred.stage_probabilities) == ["T1", "T2", "T3", "T4"]
    assert probs.min() >= 0 and abs(probs.sum() - 1) < 1e-6
    assert pred.predicted_stage == max(pred.stage_probabilities, key=pred.stage_probabilities.get)
    assert list(pred.timings_s) == list(INFERENCE_STEPS)


def test_volumes_equal_voxel_counts_times_voxel_volume(tiny):
    image = tiny["dataset"].training[1].load_image()
    pred = tiny["predictor"].predict(image, gradcam=False)
    voxel_cm3 = np.prod(image.spacing) / 1000
    for name, value in tiny["plan"].labels.items():
        if value:
            assert pred.volumes_cm3[name] == pytest.approx((pred.labels.array == value).sum() * voxel_cm3)
    assert pred.gradcam is None


def test_gradcam_is_in_0_1_and_lies_inside_the_krt_box(tiny):
    image = tiny["dataset"].training[2].load_image()
    pred = tiny["predictor"].predict(image)
    cam = pred.gradcam.array
    assert cam.min() >= 0 and cam.max() <= 1 and cam.dtype == np.float32
    box = pred.krt_box
    lo = np.minimum(box["first_corner_lps_mm"], box["last_corner_lps_mm"])
    hi = np.maximum(box["first_corner_lps_mm"], box["last_corner_lps_mm"])
    img = pred.gradcam.to_sitk()
    margin = np.array(image.spacing_xyz) * 2  # interpolation blurs the box edge by about a voxel
    for idx in np.argwhere(cam > 0.05)[:: max(1, int((cam > 0.05).sum() // 200))]:
        point = np.array(img.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]))
        assert np.all(point >= lo - margin) and np.all(point <= hi + margin)


def test_stage_probabilities_average_the_in_plane_mirrorings_of_the_crop(tiny, monkeypatch):
    predictor = tiny["predictor"]
    image = tiny["dataset"].training[1].load_image()
    calls = []
    classify, member_logits = predictor.net.classify, predictor._member_logits

    def recording(ct, seg_input):
        calls.append((ct.clone(), seg_input.clone()))
        return member_logits(ct, seg_input)

    monkeypatch.setattr(predictor, "_member_logits", recording)
    plain = predictor.predict(image, gradcam=False, tta="none")
    assert len(calls) == 1 and plain.test_time_augmentation["stage_classification"] == "none"
    ct, seg_input = calls[0]
    calls.clear()
    mirrored = predictor.predict(image, gradcam=False, tta="stage")
    assert len(calls) == 4 and "4 in-plane mirrorings" in mirrored.test_time_augmentation["stage_classification"]
    assert torch.equal(calls[0][0], ct)
    assert torch.equal(calls[3][0], torch.flip(ct, (3, 4))) and torch.equal(calls[3][1], torch.flip(seg_input, (3, 4)))
    with torch.no_grad():
        expected = np.mean([torch.softmax(classify(c, s), 1)[0].numpy() for c, s in calls], axis=0)
    np.testing.assert_allclose(list(mirrored.stage_probabilities.values()), expected / expected.sum(), atol=1e-6)
    np.testing.assert_array_equal(mirrored.labels.array, plain.labels.array)  # segmentation is not mirrored
    assert mirrored.test_time_augmentation["segmentation"] == "none"


def test_full_tta_mirrors_every_segmentation_window_along_each_axis(tiny, monkeypatch):
    from engine.inference.sliding_window import SlidingWindowPredictor

    axes_used = []

    class Recording(SlidingWindowPredictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            axes_used.append(self.mirror_axes)

    monkeypatch.setattr(predictor_module, "SlidingWindowPredictor", Recording)
    image = tiny["dataset"].training[1].load_image()
    plain = tiny["predictor"].predict(image, gradcam=False, tta="none")
    full = tiny["predictor"].predict(image, gradcam=False, tta="all")
    assert axes_used == [(), (), (0, 1, 2), (0, 1, 2)]             # low-res and full-res windows
    assert full.labels.shape == plain.labels.shape and "3 single-axis" in full.test_time_augmentation["segmentation"]
    assert abs(sum(full.stage_probabilities.values()) - 1) < 1e-6
    with pytest.raises(EngineError, match="one of all, stage, none"):
        tiny["predictor"].predict(image, tta="mirror")


def test_krt_crop_is_centred_on_the_tumour_and_pads_outside():
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[3:7, 10:16, 0:4] = 1      # tumour at the x border
    labels[8:12, 8:12, 8:12] = 3
    box = krt_box(labels, (8, 8, 8), tumour_label=1, fallback_label=3)
    assert box.source == "tumour"
    assert box.centre == bbox_centre(labels == 1) == (4.5, 12.5, 1.5)
    crop = crop_box(labels[None].astype(np.float32), box, pad_value=-1)[0]
    assert crop.shape == (8, 8, 8)
    assert (crop == -1).any()                     # the box leaves the volume at x < 0
    zz, yy, xx = np.nonzero(crop == 1)
    assert np.mean(zz) == pytest.approx(3.5) and np.mean(yy) == pytest.approx(3.5)
    labels[labels == 1] = 0
    assert krt_box(labels, (8, 8, 8), 1, 3).source == "esophagus"
    assert krt_box(np.zeros_like(labels), (8, 8, 8), 1, 3).source == "volume"
