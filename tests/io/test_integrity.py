"""File integrity checks for headers with detached data (.nhdr, .mhd), beside the attached formats."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from engine.errors import ImageError
from engine.io.image import read_image


def _write(tmp_path, name: str, compress: bool):
    arr = np.random.default_rng(0).normal(0, 100, (6, 8, 8)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name), compress)
    return arr


@pytest.mark.parametrize("name, data, compress", [
    ("a.nhdr", "a.raw", False), ("b.nhdr", "b.raw.gz", True), ("c.mhd", "c.raw", False), ("d.mhd", "d.zraw", True),
])
def test_detached_data_read_when_complete_refused_when_cut_or_missing(tmp_path, name, data, compress):
    arr = _write(tmp_path, name, compress)
    np.testing.assert_array_equal(read_image(tmp_path / name).array, arr)
    blob = (tmp_path / data).read_bytes()
    (tmp_path / data).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageError, match="is truncated") as info:
        read_image(tmp_path / name)
    assert data in str(info.value)
    (tmp_path / data).unlink()
    with pytest.raises(ImageError, match=f"data file '{data}' that is missing"):
        read_image(tmp_path / name)


def test_damaged_gzip_data_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "x.nii.gz"
    _write(tmp_path, "x.nii.gz", True)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    blob[len(blob) // 2 + 1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ImageError, match="corrupt|truncated"):
        read_image(path)
