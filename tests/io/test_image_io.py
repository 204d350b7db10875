"""Image reading/writing: geometry kept exactly, real DICOM series, and every refusal."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from engine.errors import ImageError
from engine.io.image import Image, read_image, read_label, write_image
from tests.conftest import shared_data


def _oblique_image() -> Image:
    rng = np.random.default_rng(0)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Image(rng.normal(0, 100, (7, 9, 11)).astype(np.float32), (2.5, 0.7, 0.8), (-10.5, 20.25, 33.0),
                 direction, "CT")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_geometry_and_voxels(tmp_path, suffix):
    img = _oblique_image()
    path = write_image(img, tmp_path / f"x{suffix}")
    back = read_image(path)
    assert back.shape == (7, 9, 11)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.spacing, img.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-6)
    # the written file agrees with SimpleITK's own view (x, y, z ordering)
    ref = sitk.ReadImage(str(path))
    assert ref.GetSize() == (11, 9, 7)
    np.testing.assert_allclose(ref.GetSpacing(), (0.8, 0.7, 2.5), rtol=1e-6)


def test_index_physical_round_trip():
    img = _oblique_image()
    p = img.index_to_physical((3, 4, 5))
    ref = img.to_sitk().TransformContinuousIndexToPhysicalPoint((5.0, 4.0, 3.0))
    np.testing.assert_allclose(p, ref, atol=1e-9)
    np.testing.assert_allclose(img.physical_to_index(p), (3, 4, 5), atol=1e-9)


def test_write_refuses_existing_file_without_overwrite(tmp_path):
    img = _oblique_image()
    path = write_image(img, tmp_path / "x.nii.gz")
    before = path.read_bytes()
    with pytest.raises(ImageError, match="already exists"):
        write_image(img.with_array(img.array * 0 + 1), path, overwrite=False)
    assert path.read_bytes() == before


def test_real_dicom_series_matches_simpleitk():
    folder = shared_data("nsclc_lung1_001", "ct_dicom")
    img = read_image(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    assert img.shape == (134, 512, 512)
    assert img.modality == "CT"
    np.testing.assert_allclose(img.spacing_xyz, ref.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(img.array[60], sitk.GetArrayFromImage(ref)[60].astype(np.float32))
    assert img.array.min() >= -1100 and img.array.max() > 500  # HU


def test_real_jpeg2000_dicom_series():
    folder = shared_data("totalseg", "example_ct_dicom")
    img = read_image(folder)
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    assert img.shape == tuple(reversed(ref.GetSize()))
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(ref).astype(np.float32))


def test_dicom_series_with_missing_slice_is_refused(tmp_path):
    src = shared_data("nsclc_lung1_001", "ct_dicom")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src))
    for i, f in enumerate(files[:12]):
        if i != 6:
            shutil.copy(f, tmp_path / f"slice_{i:03d}.dcm")
    with pytest.raises(ImageError, match="uneven slice spacing"):
        read_image(tmp_path)


def test_series_uid_selection_and_unknown_uid(tmp_path):
    src = shared_data("nsclc_lung1_001", "ct_dicom")
    uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(src))[0]
    assert read_image(src, series_uid=uid).shape[0] == 134
    with pytest.raises(ImageError, match="not in"):
        read_image(src, series_uid="1.2.3.4")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="corrupt"):
        read_image(bad)
    with pytest.raises(ImageError, match="No DICOM series"):
        read_image(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ImageError, match="Unsupported file type"):
        read_image(tmp_path / "x.txt")


def _write_sitk(img: sitk.Image, path) -> str:
    sitk.WriteImage(img, str(path))
    return str(path)


def test_2d_4d_and_vector_images_refused(tmp_path):
    two_d = _write_sitk(sitk.GetImageFromArray(np.random.rand(16, 16).astype(np.float32)), tmp_path / "a.nrrd")
    with pytest.raises(ImageError, match="2D"):
        read_image(two_d)
    single_slice = _write_sitk(sitk.GetImageFromArray(np.random.rand(1, 16, 16).astype(np.float32)),
                               tmp_path / "b.nii.gz")
    with pytest.raises(ImageError, match="2D"):
        read_image(single_slice)
    vol = sitk.GetImageFromArray(np.random.rand(3, 8, 8).astype(np.float32))
    four_d = _write_sitk(sitk.JoinSeries([vol, vol]), tmp_path / "c.nii.gz")
    with pytest.raises(ImageError, match="4D"):
        read_image(four_d)
    vec = sitk.GetImageFromArray(np.random.rand(4, 8, 8, 3).astype(np.float32), isVector=True)
    with pytest.raises(ImageError, match="components"):
        read_image(_write_sitk(vec, tmp_path / "d.nrrd"))


def test_constant_nan_and_bad_spacing_refused(tmp_path):
    base = np.random.rand(4, 8, 8).astype(np.float32)
    with pytest.raises(ImageError, match="constant"):
        read_image(write_image(Image(np.zeros_like(base), (1, 1, 1)), tmp_path / "c.nii.gz"))
    nan = base.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        read_image(write_image(Image(nan, (1, 1, 1)), tmp_path / "n.nrrd"))  # NIfTI stores NaN as 0
    with pytest.raises(ImageError, match="spacing"):
        read_image(write_image(Image(base, (80, 1, 1)), tmp_path / "s.nii.gz"))


def test_read_label_checks_values_and_geometry(tmp_path):
    img = _oblique_image()
    lab = Image((np.arange(img.array.size).reshape(img.shape) % 3).astype(np.uint8), img.spacing, img.origin,
                img.direction)
    path = write_image(lab, tmp_path / "l.nii.gz")
    out = read_label(path, reference=img)
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) == {0, 1, 2}
    shifted = Image(img.array, img.spacing, (0.0, 0.0, 0.0), img.direction)
    with pytest.raises(ImageError, match="geometry"):
        read_label(path, reference=shifted)
    frac = write_image(Image(lab.array.astype(np.float32) + 0.5, img.spacing), tmp_path / "f.nii.gz")
    with pytest.raises(ImageError, match="non-integer"):
        read_label(frac)
