"""Slice preprocessing: body crop + resize + inverse returns the input grid exactly."""

from __future__ import annotations

import numpy as np

from engine.io.image import Image
from engine.metrics import dice
from engine.tasks.gtv.preprocessing import GtvPlan, SlicePreprocessor, body_box, body_mask, plan_image_size


def phantom(flip: bool = False) -> tuple[Image, np.ndarray]:
    """An elliptic body in air with a table below it and a blob label; optionally stored upside down."""
    z, y, x = np.mgrid[0:20, 0:80, 0:96]
    body = ((y - 36) / 26.0) ** 2 + ((x - 50) / 38.0) ** 2 <= 1
    ct = np.where(body, 30.0, -1000.0).astype(np.float32)
    ct[:, 70:72, 5:90] = 200.0  # the table: thin, removed by erosion
    label = (((z - 10) / 4.0) ** 2 + ((y - 35) / 8.0) ** 2 + ((x - 45) / 9.0) ** 2 <= 1).astype(np.uint8)
    direction = np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3)
    image = Image(ct, (2.5, 1.2, 1.1), (-10.0, 20.0, 40.0), direction, "CT")
    return image, label


def test_body_mask_drops_table_and_air():
    image, _ = phantom()
    box = body_box(body_mask(image.array))
    assert box[1] <= 66 and box[0] <= 10 and box[2] <= 12 and box[3] >= 88


def test_plan_size_rules():
    assert plan_image_size([410, 420, 380]) == 416
    assert plan_image_size([100, 110]) == 128         # OpenKBP-like: rounded up, well under 2x
    assert plan_image_size([20]) == 32                # never below one multiple
    assert plan_image_size([33]) == 64                # 2x native (66) still allows 64
    assert plan_image_size([600]) == 512              # the paper's size caps it
    assert plan_image_size([100], override=128) == 128


def test_round_trip_exact_grid_and_label_dice():
    for flip in (False, True):
        image, label = phantom(flip)
        pre = SlicePreprocessor(GtvPlan(image_size=64, labels={"background": 0, "GTV": 1}, mean=0.0, std=500.0))
        slices, record = pre(image)
        assert slices.shape == (20, 64, 64) and slices.dtype == np.float32
        lab = pre.label_slices(label, record)
        assert lab.shape == (20, 64, 64) and lab.any()
        back = pre.restore_labels(lab, record)
        assert back.shape == image.shape
        assert dice(back, label) > 0.95
        probs = pre.restore_probabilities(lab.astype(np.float32), record)
        restored = image.with_array(probs)
        assert restored.shape == image.shape and restored.spacing == image.spacing
        assert np.allclose(restored.direction, image.direction) and restored.origin == image.origin
        assert dice(probs >= 0.5, label) > 0.95
        # slice order: input slice i of a flipped volume is canonical slice n-1-i
        order = record.input_slice_order()
        assert list(order) == (list(range(19, -1, -1)) if flip else list(range(20)))
