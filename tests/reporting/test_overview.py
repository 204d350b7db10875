"""Overview PNG: the segment contours and the heat map really are in the pixels, in any storage order."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from engine.io.image import Image
from engine.io.segmentation_nrrd import SegmentInfo
from engine.reporting import render_overview
from engine.reporting.overview import HEATMAP_ALPHA, HEATMAP_CMAP, _plane_centre

SEGMENTS = [SegmentInfo("EC", 1, (1.0, 1.0, 0.0)), SegmentInfo("aorta", 2, (0.0, 1.0, 1.0))]
PROBABILITIES = {"T1": 0.1, "T2": 0.15, "T3": 0.65, "T4": 0.1}


def _scene() -> tuple[Image, Image, np.ndarray]:
    """Air (black in the CT window), two labelled boxes on slice 8 and a hot cube away from them."""
    shape = (16, 40, 40)
    ct = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[6:11, 8:16, 8:16] = 1
    labels[6:11, 24:33, 20:31] = 2
    heat = np.zeros(shape, np.float32)
    heat[5:12, 26:38, 2:14] = 1.0
    geometry = {"spacing": (3.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0), "direction": np.eye(3)}
    return Image(ct, modality="CT", **geometry), Image(labels, **geometry), heat


def _count_near(png: np.ndarray, rgb, tolerance: float = 0.08) -> int:
    return int(np.count_nonzero(np.all(np.abs(png[..., :3] - np.asarray(rgb)) < tolerance, axis=-1)))


def test_png_has_segment_contours_heat_map_and_landscape_layout(tmp_path):
    image, labels, heat = _scene()
    path = render_overview(image, labels, heat, SEGMENTS, PROBABILITIES, tmp_path / "overview.png",
                           title="case 1")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    png = imread(path)
    height, width = png.shape[:2]
    assert width > 2 * height

    # the legend alone also shows the colours: the contours must add many more such pixels
    legend_only = imread(render_overview(image, labels.with_array(np.zeros_like(labels.array)), heat, SEGMENTS,
                                         PROBABILITIES, tmp_path / "legend_only.png"))
    for segment in SEGMENTS:
        assert _count_near(png, segment.color) > _count_near(legend_only, segment.color) + 50, segment.name

    # heat 1.0 over black air, blended at HEATMAP_ALPHA
    hot = HEATMAP_ALPHA * np.asarray(colormaps[HEATMAP_CMAP](1.0)[:3])
    assert _count_near(png, hot, tolerance=0.03) > 100
    without_heat = imread(render_overview(image, labels, None, SEGMENTS, PROBABILITIES, tmp_path / "no_heat.png"))
    assert _count_near(without_heat, hot, tolerance=0.03) == 0


def test_without_heat_map_and_probabilities_the_figure_is_narrower(tmp_path):
    image, labels, heat = _scene()
    full = imread(render_overview(image, labels, heat, SEGMENTS, PROBABILITIES, tmp_path / "full.png"))
    bare = imread(render_overview(image, labels, None, SEGMENTS, None, tmp_path / "bare.png"))
    assert bare.shape[0] == full.shape[0] and full.shape[1] > bare.shape[1] > bare.shape[0]
    assert _count_near(bare, SEGMENTS[0].color) > 50


def test_same_scene_in_another_storage_order_gives_the_same_picture(tmp_path):
    """x stored right-to-left (direction diag(-1, 1, 1)) is the same patient: the views must not mirror."""
    image, labels, heat = _scene()
    flipped_direction = np.diag([-1.0, 1.0, 1.0])
    origin = (39.0, 0.0, 0.0)  # the last column of the original grid becomes voxel 0

    def flip(volume: Image) -> Image:
        return Image(volume.array[:, :, ::-1].copy(), volume.spacing, origin, flipped_direction, volume.modality)

    a = imread(render_overview(image, labels, heat, SEGMENTS, PROBABILITIES, tmp_path / "a.png"))
    b = imread(render_overview(flip(image), flip(labels), heat[:, :, ::-1], SEGMENTS, PROBABILITIES,
                               tmp_path / "b.png"))
    np.testing.assert_array_equal(a, b)


def test_absent_focus_label_falls_back_to_all_labels_then_volume_centre(tmp_path):
    image, labels, heat = _scene()
    assert _plane_centre(labels.array, 1) == (8, 12, 12)
    assert _plane_centre(labels.array, 2) == (8, 28, 25)
    both = np.argwhere(labels.array > 0).mean(axis=0)
    assert _plane_centre(labels.array, 4) == tuple(int(np.rint(c)) for c in both)
    assert _plane_centre(np.zeros((16, 40, 40), np.uint8), 1) == (8, 20, 20)
    png = imread(render_overview(image, labels, heat, SEGMENTS, None, tmp_path / "x.png", focus_label=4))
    assert _count_near(png, SEGMENTS[1].color) > 50


def test_mismatched_heat_map_is_refused(tmp_path):
    image, labels, _ = _scene()
    with pytest.raises(ValueError, match="heat map shape"):
        render_overview(image, labels, np.zeros((4, 4, 4)), SEGMENTS, None, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_a_scan_already_in_lps_order_is_drawn_as_dicomorient_would_give_it():
    """The identity-direction shortcut must give exactly what reorienting with DICOMOrient gives."""
    import SimpleITK as sitk

    from engine.reporting.overview import _orient_lps

    rng = np.random.default_rng(0)
    geometry = {"spacing": (2.0, 0.8, 0.7), "origin": (-5.0, 3.0, 1.0), "direction": np.eye(3)}
    image = Image(rng.normal(0, 100, (6, 9, 11)).astype(np.int16), modality="CT", **geometry)
    labels = Image(rng.integers(0, 3, (6, 9, 11)).astype(np.uint8), **geometry)
    heat = rng.uniform(-0.5, 1.5, (6, 9, 11))
    volume, label_map, heat_map = _orient_lps(image, labels, heat)
    reoriented = sitk.GetArrayFromImage(sitk.DICOMOrient(image.to_sitk(), "LPS"))
    assert volume.array.dtype == np.float32 and np.array_equal(volume.array, reoriented)
    assert np.array_equal(label_map.array, sitk.GetArrayFromImage(sitk.DICOMOrient(labels.to_sitk(), "LPS")))
    assert heat_map.dtype == np.float32 and heat_map.min() == 0.0 and heat_map.max() == 1.0  # clipped
    assert np.allclose(heat_map, np.clip(heat, 0, 1), atol=1e-7)
