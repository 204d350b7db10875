"""Corrupt, truncated and inconsistent input images are refused with a message naming the file and the fault.

Before, ITK read a .nii/.nii.gz whose end was cut off as a volume with zeros where the data was missing,
so `engine run` produced a result and `engine validate` found nothing wrong. Every bad input here goes
through the read function, `engine run` (exit 2, one `error:` line, no output folder), and — where it can
sit in a dataset — `engine validate` and `engine train`.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine.cli import main
from engine.errors import ImageError
from engine.io.image import Image, read_image, read_label, write_image
from tests.conftest import blob_case, write_blob_dataset

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "esophagus-demo-0.6.0"


def _image() -> Image:
    return blob_case(0)[0]


def _truncate(path: Path, keep: float = 2 / 3) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _truncated(suffix: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        return _truncate(write_image(_image(), folder / f"scan{suffix}"))
    return make


def _nifti_edit(offset: int, fmt: str, value) -> Callable[[Path], Path]:
    """A .nii.gz whose header field at ``offset`` is overwritten."""
    def make(folder: Path) -> Path:
        path = write_image(_image(), folder / "scan.nii.gz")
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        path.write_bytes(gzip.compress(bytes(raw)))
        return path
    return make


def _voxels(array: np.ndarray, suffix: str = ".nii.gz") -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        img = _image()
        return write_image(Image(array, img.spacing, img.origin, img.direction), folder / f"scan{suffix}")
    return make


def _nan_image() -> np.ndarray:
    arr = _image().array.copy()
    arr[3, 4, 5] = np.nan
    arr[4, 4, 5] = np.inf
    return arr


# (id, maker, what the message must say)
FILE_CASES = [
    ("truncated-nii-gz", _truncated(".nii.gz"), "is truncated"),
    ("truncated-nii", _truncated(".nii"), "is truncated"),
    ("truncated-nrrd", _truncated(".nrrd"), "is truncated"),
    ("truncated-mha", _truncated(".mha"), "is truncated"),
    ("corrupt-header-size", _nifti_edit(0, "<i", 12345), "is corrupt: its NIfTI header is damaged"),
    ("corrupt-header-dims", _nifti_edit(40, "<h", 11), "is corrupt: its NIfTI header is damaged"),
    ("empty-volume", _nifti_edit(42, "<h", 0), "holds no voxels"),
    ("nan-voxels", _voxels(_nan_image(), ".nrrd"), "NaN or infinite"),
    ("constant-volume", _voxels(np.zeros((24, 32, 32), np.float32)), "holds one value only"),
]
NIFTI_GZ_CASES = [c for c in FILE_CASES if c[0] in {"truncated-nii-gz", "corrupt-header-size",
                                                   "corrupt-header-dims", "empty-volume", "constant-volume"}]


@pytest.mark.parametrize("make, message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_read_image_refuses_a_bad_file(tmp_path, capfd, make, message):
    path = make(tmp_path)
    with pytest.raises(ImageError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert capfd.readouterr().err == ""  # nothing from ITK/MetaIO before the error


def test_intact_files_still_read_exactly(tmp_path):
    img = _image()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        np.testing.assert_array_equal(read_image(write_image(img, tmp_path / f"ok{suffix}")).array, img.array)


def test_read_label_refuses_a_truncated_label_map(tmp_path):
    label = blob_case(0)[1]
    path = _truncate(write_image(label, tmp_path / "label.nii.gz"))
    with pytest.raises(ImageError, match="is truncated"):
        read_label(path)


def _run(source: Path, out: Path, capfd) -> tuple[int, list[str]]:
    capfd.readouterr()
    code = main(["run", "--task", "esophagus", "--input", str(source), "--out", str(out),
                 "--model", str(DEMO_MODEL), "--device", "cpu"])
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _assert_refused(code: int, lines: list[str], out: Path, *needles: str) -> None:
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, lines
    assert len(errors) == 1, lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not [line for line in lines if "ITK" in line or "MetaImage" in line or "WARNING" in line], lines
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("make, message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_engine_run_refuses_a_bad_file(tmp_path, capfd, make, message):
    path = make(tmp_path)
    out = tmp_path / "result"
    code, lines = _run(path, out, capfd)
    _assert_refused(code, lines, out, message, path.name)


@pytest.mark.parametrize("make, message", [c[1:] for c in NIFTI_GZ_CASES], ids=[c[0] for c in NIFTI_GZ_CASES])
def test_engine_validate_reports_a_bad_image(tmp_path, capfd, make, message):
    root = write_blob_dataset(tmp_path / "ds", cases=2)
    target = root / "imagesTr" / "case_001_0000.nii.gz"
    shutil.move(make(tmp_path), target)
    capfd.readouterr()
    assert main(["validate", str(root)]) == 1
    out = capfd.readouterr().out
    assert "case_001" in out and message in out and "case_001_0000.nii.gz" in out


def test_engine_validate_reports_a_truncated_label_map(tmp_path, capfd):
    root = write_blob_dataset(tmp_path / "ds", cases=2)
    assert main(["validate", str(root)]) == 0  # the intact dataset passes
    _truncate(root / "labelsTr" / "case_000.nii.gz")
    capfd.readouterr()
    assert main(["validate", str(root)]) == 1
    out = capfd.readouterr().out
    assert "case_000" in out and "is truncated" in out


def test_engine_train_refuses_a_truncated_image_before_training(tmp_path, capfd):
    root = write_blob_dataset(tmp_path / "ds", cases=4)
    _truncate(root / "imagesTr" / "case_002_0000.nii.gz")
    out = tmp_path / "model"
    capfd.readouterr()
    code = main(["train", "--task", "esophagus", "--data", str(root), "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 2
    assert "case_002" in err and "is truncated" in err
    assert not out.exists()


# --- DICOM series ------------------------------------------------------------------------------------

def _write_series(folder: Path, *, z: list[float], sizes: list[int] | None = None,
                  orientations: list[str] | None = None, pixel_spacings: list[float] | None = None) -> Path:
    """A CT series of len(z) slices at positions ``z`` (mm), written slice by slice with SimpleITK."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    series, study = "1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, zk in enumerate(z):
        n = sizes[k] if sizes else 24
        arr = rng.integers(-1000, 1000, (n, n)).astype(np.int16)
        sl = sitk.GetImageFromArray(arr)
        ps = pixel_spacings[k] if pixel_spacings else 0.8
        sl.SetSpacing((ps, ps))
        tags = {"0008|0060": "CT", "0020|000d": study, "0020|000e": series, "0020|0013": str(k + 1),
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series}.{k + 1}",
                "0020|0032": f"0\\0\\{zk}", "0028|0030": f"{ps}\\{ps}",
                "0020|0037": orientations[k] if orientations else "1\\0\\0\\0\\1\\0"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


EVEN = [2.0 * k for k in range(12)]
DICOM_CASES = [
    ("missing-middle-slice", dict(z=EVEN[:6] + EVEN[7:]), "1 missing slice"),
    ("inconsistent-spacing", dict(z=[2.0 * k for k in range(6)] + [10 + 3.0 * k for k in range(1, 7)]),
     "uneven slice spacing"),
    ("mixed-sizes", dict(z=EVEN, sizes=[24] * 6 + [20] * 6), "mixes slice sizes"),
    ("mixed-orientation", dict(z=EVEN, orientations=["1\\0\\0\\0\\1\\0"] * 6 + ["1\\0\\0\\0\\0.8\\0.6"] * 6),
     "mixes slice orientations"),
    ("mixed-pixel-spacing", dict(z=EVEN, pixel_spacings=[0.8] * 6 + [0.9] * 6), "mixes pixel spacings"),
]


def test_a_complete_hand_written_series_reads(tmp_path):
    img = read_image(_write_series(tmp_path / "ok", z=EVEN))
    assert img.shape == (12, 24, 24) and img.modality == "CT"
    np.testing.assert_allclose(img.spacing, (2.0, 0.8, 0.8), rtol=1e-4)


@pytest.mark.parametrize("spec, message", [c[1:] for c in DICOM_CASES], ids=[c[0] for c in DICOM_CASES])
def test_inconsistent_dicom_series_is_refused(tmp_path, capfd, spec, message):
    folder = _write_series(tmp_path / "series", **spec)
    with pytest.raises(ImageError, match=message) as info:
        read_image(folder)
    assert str(folder) in str(info.value)
    out = tmp_path / "result"
    code, lines = _run(folder, out, capfd)
    _assert_refused(code, lines, out, message, str(folder))
