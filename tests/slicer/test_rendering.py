"""Offscreen renders (EGL) of Segment & Stage results: the segment colours appear on the 3D
surfaces, and the Grad-CAM heat map appears over the CT in a slice view."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed; install the 'slicer' extra")

import ctypes.util  # noqa: E402

if ctypes.util.find_library("EGL") is None:
    pytest.skip("no EGL library for offscreen rendering (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)",
                allow_module_level=True)

import SimpleITK as sitk  # noqa: E402
import slicer.util  # noqa: E402

import offscreen  # noqa: E402  (tests/slicer is on sys.path: pytest rootdir-relative import)
from OncoStagingCommon import results  # noqa: E402
from OncoStagingCommon.logic import RunOptions, TaskLogic  # noqa: E402
from OncoStagingCommon.process import InProcessLauncher  # noqa: E402


@pytest.fixture
def rendered(headless, phantoms, trained, tmp_path):
    ct = headless.load_volume(phantoms.training[0].image_files[0], "Patient1 CT")
    three_d = offscreen.ThreeDView(headless.scene, headless.app_logic, size=(400, 400))
    axial = offscreen.SliceView(headless.scene, headless.app_logic, size=(400, 400))
    logic = TaskLogic("esophagus", scene=headless.scene, launcher=InProcessLauncher())
    outcome = logic.process(ct, RunOptions(model=str(trained.bundle_dir), device="cpu",
                                           output_dir=tmp_path / "run"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "segmentation.nii.gz")))
    return ct, outcome, labels, three_d, axial


def test_3d_view_shows_every_reconstructed_structure_in_its_colour(rendered):
    ct, outcome, labels, three_d, _ = rendered
    image = three_d.render("Anterior")
    assert image.shape == (400, 400, 3) and image.any()
    segmentation = outcome.nodes.segmentation.GetSegmentation()
    display = outcome.nodes.segmentation.GetDisplayNode()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    checked = 0
    for segment_id in ids:
        segment = segmentation.GetSegment(segment_id)
        present = (labels == segment.GetLabelValue()).sum()
        for other in ids:  # one structure at a time, so none hides another
            display.SetSegmentVisibility(other, other == segment_id)
        fraction = offscreen.colour_fraction(three_d.render("Anterior"), segment.GetColor())
        if present >= 20:
            checked += 1
            assert fraction > 1e-4, segment.GetName()
        elif present == 0:
            assert fraction == 0, segment.GetName()
    for other in ids:
        display.SetSegmentVisibility(other, True)
    assert checked >= 1
    results.set_surfaces_visible(outcome.nodes.segmentation, False)
    assert not three_d.render("Anterior").any()  # hiding 3D removes every surface


def test_slice_view_shows_the_gradcam_heat_map_over_the_ct(headless, rendered):
    ct, outcome, labels, _, axial = rendered
    cam = outcome.nodes.gradcam
    cam_array = slicer.util.arrayFromVolume(cam)
    k = int(np.argmax(cam_array.reshape(cam_array.shape[0], -1).max(axis=1)))
    outcome.nodes.segmentation.GetDisplayNode().SetVisibility2D(False)  # only CT + heat map
    offset = offscreen.axial_offset(ct, k)
    with_heat = axial.render(offset)
    assert axial.composite.GetForegroundVolumeID() == cam.GetID()
    results.show_gradcam_in_slice_views(headless.scene, ct, None)
    without = axial.render(offset)
    assert offscreen.warm_fraction(without) < 1e-3  # the CT alone is grey
    assert offscreen.warm_fraction(with_heat) > 5e-3  # the heat map tints it red/yellow
    assert without.mean() > 10  # and the CT itself is visible
