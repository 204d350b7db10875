"""Segmentation metrics against hand-computed values and an independent brute-force surface distance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from engine.io.image import Image
from engine.metrics import MetricInputError, assd, dice, hd95, iou, segmentation_scores


def _box(shape, *slices) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slices)] = True
    return m


def _sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def _brute_force(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    """HD95 (max of directed linear-interpolated 95th percentiles) and ASSD, from all surface-point pairs.

    Surfaces: mask minus its binary erosion (face connectivity, zeros outside the array).
    """
    sp = np.asarray(spacing, dtype=float)
    pts_p = np.argwhere(pred & ~binary_erosion(pred, border_value=0)) * sp
    pts_r = np.argwhere(ref & ~binary_erosion(ref, border_value=0)) * sp
    d = cdist(pts_p, pts_r)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    hd = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return float(hd), float(np.concatenate([d_pr, d_rp]).mean())


# --- Dice / IoU ----------------------------------------------------------------------------------

def test_cubes_shifted_by_one_voxel_give_exact_fractions():
    a = _box((10, 10, 10), slice(2, 6), slice(2, 6), slice(2, 6))  # 64 voxels
    b = _box((10, 10, 10), slice(3, 7), slice(2, 6), slice(2, 6))  # 64 voxels, overlap 3·4·4 = 48
    assert dice(a, b) == pytest.approx(2 * 48 / (64 + 64), rel=1e-6)  # 0.75
    assert iou(a, b) == pytest.approx(48 / 80, rel=1e-6)  # |A∪B| = 64 + 64 − 48
    assert dice(a, b) == pytest.approx(dice(b, a), rel=1e-7)


def test_nested_cubes():
    outer = _box((8, 8, 8), slice(0, 4), slice(0, 4), slice(0, 4))  # 64
    inner = _box((8, 8, 8), slice(1, 3), slice(1, 3), slice(1, 3))  # 8, inside
    assert dice(inner, outer) == pytest.approx(2 * 8 / 72, rel=1e-6)
    assert iou(inner, outer) == pytest.approx(8 / 64, rel=1e-6)
    assert dice(outer, outer) == 1.0 and iou(outer, outer) == 1.0


def test_dice_iou_accept_0_1_numbers_2d_flipped_and_read_only_arrays():
    a = _box((6, 6), slice(0, 3), slice(0, 2))  # 6 px
    b = _box((6, 6), slice(1, 3), slice(0, 3))  # 6 px, overlap 4
    assert dice(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(8 / 12, rel=1e-6)
    # Flipped views have negative strides (torch.from_numpy refuses them); read-only arrays warn in torch.
    assert dice(a[::-1, ::-1], b[::-1, ::-1]) == pytest.approx(8 / 12, rel=1e-6)
    ro = a.copy()
    ro.flags.writeable = False
    assert iou(ro, b) == pytest.approx(4 / 8, rel=1e-6)
    assert hd95(a[::-1], b[::-1], 1.0) == pytest.approx(hd95(a, b, 1.0))


def test_rejects_non_binary_shape_mismatch_and_wrong_dimensionality():
    a = np.zeros((4, 4, 4))
    with pytest.raises(MetricInputError, match="binary"):
        dice(a + 0.5, a)
    with pytest.raises(MetricInputError, match="shape"):
        iou(a, np.zeros((4, 4, 5)))
    with pytest.raises(MetricInputError, match="2D or 3D"):
        dice(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError):  # MetricInputError is a ValueError too
        hd95(np.array([[2, 0], [0, 0]]), np.zeros((2, 2)), 1.0)


# --- empty-mask conventions ----------------------------------------------------------------------

def test_empty_mask_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    cube = _box((6, 6, 6), slice(1, 3), slice(1, 3), slice(1, 3))
    # both empty: perfect agreement
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert hd95(empty, empty, 1.0) == 0.0 and assd(empty, empty, 1.0) == 0.0
    # exactly one empty (either side): no overlap, undefined distance
    for p, r in ((cube, empty), (empty, cube)):
        assert dice(p, r) == 0.0 and iou(p, r) == 0.0
        assert math.isnan(hd95(p, r, 1.0)) and math.isnan(assd(p, r, 1.0))


# --- HD95 / ASSD ---------------------------------------------------------------------------------

def test_hand_computed_2d_squares_with_anisotropic_spacing():
    # 3×3 squares (rows 2–4 and 3–5, columns 2–4): each surface is the 8-pixel ring.
    # Directed A→B: the three pixels of row 2 are one row from B's ring, the centre pixel of row 4 is one
    # column from B's ring (and one row from B's centre-row pixel, which is on B's ring), the rest lie on
    # B's ring. Same by symmetry for B→A.
    a = _box((8, 8), slice(2, 5), slice(2, 5))
    b = _box((8, 8), slice(3, 6), slice(2, 5))
    row, col = 2.0, 0.5  # mm
    # distances A→B: [row, row, row, min(row, col), 0, 0, 0, 0]; sorted 95th percentile (linear) = row
    assert hd95(a, b, (row, col)) == pytest.approx(2.0, rel=1e-6)
    assert assd(a, b, (row, col)) == pytest.approx(2 * (3 * row + col) / 16, rel=1e-6)  # 13/16 mm
    # swapping the spacing shows the axis order is honoured: every non-zero distance is now 0.5 mm
    assert hd95(a, b, (col, row)) == pytest.approx(0.5, rel=1e-6)
    assert assd(a, b, (col, row)) == pytest.approx(2 * 4 * 0.5 / 16, rel=1e-6)
    # identical masks: zero distance
    assert hd95(a, a, (row, col)) == 0.0 and assd(a, a, (row, col)) == 0.0


def test_cube_translation_hausdorff_is_shift_times_spacing():
    # A cube translated by k voxels along z: every surface voxel is within k·s_z of the other surface and
    # the far faces are exactly k·s_z away, so the 100th percentile is k·s_z; HD95 cannot exceed it.
    k, sz = 2, 2.5
    a = _box((16, 12, 12), slice(3, 9), slice(3, 9), slice(3, 9))
    b = np.roll(a, k, axis=0)
    hd, _ = _brute_force(a, b, (sz, 0.7, 0.9))
    assert hd == pytest.approx(k * sz)
    assert hd95(a, b, (sz, 0.7, 0.9)) == pytest.approx(k * sz, rel=1e-6)


@pytest.mark.parametrize("shift, spacing", [
    ((2, 0, 0), (3.0, 0.8, 0.8)),
    ((0, 1, -2), (1.5, 0.6, 1.1)),
    ((1, 3, 0), (1.0, 1.0, 1.0)),
])
def test_shifted_sphere_matches_brute_force_distances(shift, spacing):
    shape = (18, 22, 22)
    ref = _sphere(shape, (8.5, 10.5, 10.5), 5.2)
    pred = _sphere(shape, tuple(c + s for c, s in zip((8.5, 10.5, 10.5), shift)), 4.6)
    want_hd, want_assd = _brute_force(pred, ref, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(want_hd, rel=1e-5)
    assert assd(pred, ref, spacing) == pytest.approx(want_assd, rel=1e-5)
    # symmetric metrics
    assert hd95(ref, pred, spacing) == pytest.approx(want_hd, rel=1e-5)
    assert assd(ref, pred, spacing) == pytest.approx(want_assd, rel=1e-5)


def test_masks_touching_the_array_edge_and_cropping_do_not_change_distances():
    # Masks on the border of the array: the border voxels count as surface (zeros assumed outside).
    shape = (7, 9, 9)
    ref = _box(shape, slice(0, 5), slice(0, 9), slice(2, 6))
    pred = _box(shape, slice(1, 7), slice(0, 7), slice(3, 9))
    spacing = (2.0, 0.75, 1.25)
    want_hd, want_assd = _brute_force(pred, ref, spacing)
    assert hd95(pred, ref, spacing) == pytest.approx(want_hd, rel=1e-5)
    assert assd(pred, ref, spacing) == pytest.approx(want_assd, rel=1e-5)
    # the same pair inside a much larger field of view gives identical numbers
    big_p, big_r = np.zeros((40, 50, 50), bool), np.zeros((40, 50, 50), bool)
    big_p[10:17, 20:29, 5:14], big_r[10:17, 20:29, 5:14] = pred, ref
    want_hd, want_assd = _brute_force(big_p, big_r, spacing)
    assert hd95(big_p, big_r, spacing) == pytest.approx(want_hd, rel=1e-5)
    assert assd(big_p, big_r, spacing) == pytest.approx(want_assd, rel=1e-5)
    assert dice(big_p, big_r) == pytest.approx(dice(pred, ref), rel=1e-7)


def test_scalar_spacing_and_spacing_validation():
    a = _box((8, 8, 8), slice(2, 5), slice(2, 5), slice(2, 5))
    b = np.roll(a, 1, axis=2)
    assert hd95(a, b, 1.5) == pytest.approx(hd95(a, b, (1.5, 1.5, 1.5)))
    for bad in (None, (1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0), -1.0):
        with pytest.raises(MetricInputError, match="spacing"):
            assd(a, b, bad)


# --- label maps ----------------------------------------------------------------------------------

def test_segmentation_scores_per_structure_with_volumes():
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm³ per voxel
    ref = np.zeros((10, 12, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1
    ref[7:9, 8:10, 8:10] = 2  # structure 2 missed by the prediction
    pred[0, 0, 0] = 3  # a label not asked for is ignored
    scores = segmentation_scores(pred, ref, {"tumour": 1, "node": 2, "absent": 4}, spacing)
    t = scores["tumour"]
    assert t.label == 1 and t.name == "tumour"
    assert t.dice == pytest.approx(0.75, rel=1e-6) and t.iou == pytest.approx(0.6, rel=1e-6)
    assert t.hd95_mm == pytest.approx(hd95(pred == 1, ref == 1, spacing), rel=1e-7)
    assert t.assd_mm == pytest.approx(assd(pred == 1, ref == 1, spacing), rel=1e-7)
    assert t.pred_volume_cm3 == pytest.approx(64 * 0.5 / 1000) and t.ref_volume_cm3 == pytest.approx(0.032)
    assert t.volume_difference_cm3 == pytest.approx(0.0)
    n = scores["node"]
    assert n.dice == 0.0 and math.isnan(n.hd95_mm) and n.ref_volume_cm3 == pytest.approx(8 * 0.5 / 1000)
    assert n.volume_difference_cm3 == pytest.approx(-0.004)
    a = scores["absent"]
    assert a.dice == 1.0 and a.hd95_mm == 0.0 and a.assd_mm == 0.0
    # NaN becomes null in JSON
    d = n.to_dict()
    assert d["hd95_mm"] is None and d["assd_mm"] is None
    json.dumps({k: s.to_dict() for k, s in scores.items()}, allow_nan=False)


def test_segmentation_scores_takes_spacing_from_images():
    ref = np.zeros((8, 10, 10), np.uint8)
    ref[2:5, 3:7, 3:7] = 1
    pred = np.roll(ref, 1, axis=0)
    spacing = (3.0, 0.8, 0.8)
    from_images = segmentation_scores(Image(pred, spacing), Image(ref, spacing), {"gtv": 1})["gtv"]
    from_arrays = segmentation_scores(pred, ref, {"gtv": 1}, spacing=spacing)["gtv"]
    assert from_images == from_arrays
    assert from_images.hd95_mm == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(MetricInputError, match="spacing"):
        segmentation_scores(pred, ref, {"gtv": 1})  # plain arrays need a spacing
    with pytest.raises(MetricInputError, match="different spacings"):
        segmentation_scores(Image(pred, spacing), Image(ref, (1.0, 0.8, 0.8)), {"gtv": 1})


def test_segmentation_scores_input_errors():
    ref = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(MetricInputError, match="shape"):
        segmentation_scores(np.zeros((4, 4, 5), np.uint8), ref, {"a": 1}, (1, 1, 1))
    with pytest.raises(MetricInputError, match="at least one"):
        segmentation_scores(ref, ref, {}, (1, 1, 1))
    for bad in (1.5, "1", True):
        with pytest.raises(MetricInputError, match="integer"):
            segmentation_scores(ref, ref, {"a": bad}, (1, 1, 1))
    with pytest.raises(MetricInputError, match="integer labels"):
        segmentation_scores(ref + 0.5, ref, {"a": 1}, (1, 1, 1))
