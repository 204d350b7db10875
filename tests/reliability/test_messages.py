"""Messages show plain numbers, and every file the engine writes honours the user's umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli import main
from engine.io.image import Image, write_image
from engine.io.segmentation_nrrd import SegmentInfo, write_segmentation_nrrd


def test_an_absurd_spacing_is_named_in_plain_numbers(tmp_path, capsys):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 100, (8, 8, 8)).astype(np.float32) - 500)
    image.SetSpacing((1.0, 1.0, 60.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    assert main(["run", "--task", "esophagus", "--input", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "60 × 1 × 1 mm" in err[0]
    assert "np." not in err[0] and "float64" not in err[0]


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_images_and_slicer_segmentations_honour_the_umask(tmp_path, umask_027):
    labels = Image(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, 1.0))
    labels.array[1:3, 1:3, 1:3] = 1
    write_image(labels, tmp_path / "labels.nii.gz")
    write_segmentation_nrrd(labels, tmp_path / "labels.seg.nrrd", [SegmentInfo("GTV", 1, (1.0, 0.0, 0.0))])
    for name in ("labels.nii.gz", "labels.seg.nrrd"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_a_saved_model_bundle_honours_the_umask(tmp_path, umask_027):
    import torch

    from engine.registry import DEMO_INTENDED_USE, save_bundle

    out = tmp_path / "model"
    save_bundle(out, id="m", name="m", version="1.0.0", task="esophagus", architecture={"name": "x"}, plan={},
                labels=[{"name": "EC", "value": 1, "color": [255, 0, 0]}], stages=None, modality="CT", training={}, metrics={}, intended_use=DEMO_INTENDED_USE,
                weights={"net": {"w": torch.zeros(2)}}, model_card="# m\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "net.safetensors": 0o640, "MODEL_CARD.md": 0o640, "model.json": 0o640}
