"""One image type for the whole engine, read from and written to NIfTI, NRRD, MHA and DICOM.

Conventions (chosen so NumPy code never has to think about ITK's index order):

- ``array`` is indexed ``[z, y, x]`` (slice, row, column), exactly what
  ``SimpleITK.GetArrayFromImage`` returns.
- ``spacing`` is in the same ``(z, y, x)`` order as the array axes, in millimetres.
- ``origin`` is the physical position (LPS, mm) of voxel ``[0, 0, 0]`` as ``(x, y, z)``.
- ``direction`` is ITK's 3×3 direction matrix (row-major, physical × index axes i, j, k).

These are the same geometry fields ITK stores, so a read → write round trip keeps them exactly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from engine.errors import ImageError

log = logging.getLogger(__name__)

#: Largest voxel spacing accepted, in mm. Anything coarser is not a diagnostic volume.
MAX_SPACING_MM = 50.0
#: Relative tolerance on the slice gap of a DICOM series before it counts as a missing slice.
SLICE_GAP_TOLERANCE = 0.1
READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class Image:
    """A 3D scalar volume with its physical geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str | None = None

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry, new voxels (e.g. a prediction for this image)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from image shape {self.shape}")
        return replace(self, array=array)

    def index_to_physical(self, index_zyx: Sequence[float]) -> np.ndarray:
        """Physical LPS point (x, y, z) of a continuous voxel index given in (z, y, x) order."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[::-1]
        return np.asarray(self.origin) + self.direction @ (ijk * np.asarray(self.spacing_xyz))

    def physical_to_index(self, point_xyz: Sequence[float]) -> np.ndarray:
        """Continuous (z, y, x) index of a physical LPS point."""
        rel = np.asarray(point_xyz, dtype=np.float64) - np.asarray(self.origin)
        ijk = np.linalg.solve(self.direction, rel) / np.asarray(self.spacing_xyz)
        return ijk[::-1]

    def same_geometry(self, other: "Image", tolerance: float = 1e-4) -> bool:
        """True when both images cover the same voxel grid in physical space."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=tolerance)
            and np.allclose(self.origin, other.origin, rtol=tolerance, atol=tolerance * 10)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def geometry_summary(self) -> dict:
        return {
            "shape_zyx": list(self.shape),
            "spacing_zyx_mm": [round(s, 6) for s in self.spacing],
            "origin_xyz_mm": [round(o, 4) for o in self.origin],
            "direction": [round(d, 6) for d in self.direction.ravel().tolist()],
        }

    # --- SimpleITK bridge -------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing_xyz)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel().tolist()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, dtype: np.dtype | type | None = np.float32,
                  modality: str | None = None) -> "Image":
        array = sitk.GetArrayFromImage(img)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        return cls(
            array=array,
            spacing=tuple(reversed(img.GetSpacing())),
            origin=img.GetOrigin(),
            direction=np.asarray(img.GetDirection()).reshape(3, 3),
            modality=modality,
        )


# --- reading -----------------------------------------------------------------------------------

def read_image(path: str | os.PathLike, series_uid: str | None = None, validate: bool = True) -> Image:
    """Read a 3D scalar image (file or DICOM series folder) as float32.

    A folder is read as a DICOM series: the one with the most slices unless ``series_uid`` is given.
    With ``validate`` the volume is checked for the problems listed in :func:`validate_image`.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"Input not found: '{path}'. Check the path, or pick a NIfTI/NRRD/MHA file "
                         "or a DICOM series folder.")
    if path.is_dir():
        img, modality = _read_dicom_series(path, series_uid)
    else:
        img, modality = _read_file(path)
    _check_dimensions(img, path)
    image = Image.from_sitk(img, dtype=np.float32, modality=modality)
    if validate:
        validate_image(image, source=str(path))
    return image


def read_label(path: str | os.PathLike, reference: Image | None = None) -> Image:
    """Read a label map with integer voxels; optionally check it lies on ``reference``'s grid."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"Label file not found: '{path}'.")
    img, _ = _read_file(path)
    _check_dimensions(img, path)
    label = Image.from_sitk(img, dtype=None)
    values = label.array
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ImageError(f"Label map '{path}' has non-integer voxel values; a label map must hold "
                             "integer class indices.")
    if values.min() < 0 or values.max() > 255:
        raise ImageError(f"Label map '{path}' has values outside 0..255 ({values.min()}..{values.max()}).")
    label.array = values.astype(np.uint8)
    if reference is not None and not label.same_geometry(reference):
        raise ImageError(f"Label map '{path}' does not share the image's geometry: label "
                         f"{label.geometry_summary()} vs image {reference.geometry_summary()}.")
    return label


def _read_file(path: Path) -> tuple[sitk.Image, str | None]:
    name = path.name.lower()
    if name.endswith(".dcm"):
        return _read_dicom_series(path.parent, None)
    if not name.endswith(READABLE_SUFFIXES):
        raise ImageError(f"Unsupported file type '{path.name}'. Use NIfTI (.nii/.nii.gz), NRRD (.nrrd), "
                         "MHA/MHD, or a DICOM series folder.")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageError(f"Cannot read '{path}': the file is corrupt or not a {path.suffix} image "
                         f"({_first_line(exc)}).") from None
    return img, None


def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """Series UID → sorted slice files of every DICOM series found directly in ``folder``."""
    folder = str(folder)
    series: dict[str, list[str]] = {}
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ():
        series[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
    return series


def _read_dicom_series(folder: Path, series_uid: str | None) -> tuple[sitk.Image, str | None]:
    series = list_dicom_series(folder)
    if not series:
        raise ImageError(f"No DICOM series found in '{folder}'. Point to the folder that holds the "
                         "series' .dcm files, or to a NIfTI/NRRD/MHA file.")
    if series_uid is not None:
        if series_uid not in series:
            raise ImageError(f"Series '{series_uid}' is not in '{folder}'. Available: {sorted(series)}.")
        uid = series_uid
    else:
        uid = max(series, key=lambda k: len(series[k]))
        if len(series) > 1:
            log.info("%d DICOM series in %s; reading the largest (%s, %d slices)",
                     len(series), folder, uid, len(series[uid]))
    files = series[uid]
    if len(files) < 2:
        raise ImageError(f"DICOM series '{uid}' in '{folder}' has a single slice; a 3D volume is needed.")
    positions = _slice_positions(files)
    _check_even_slices(positions, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageError(f"Cannot read the DICOM series in '{folder}' ({_first_line(exc)}).") from None
    modality = None
    if reader.HasMetaDataKey(0, "0008|0060"):
        modality = reader.GetMetaData(0, "0008|0060").strip() or None
    return img, modality


def _slice_positions(files: list[str]) -> np.ndarray:
    """Position of each slice along the slice normal, from the DICOM headers."""
    positions = []
    normal = None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.ReadImageInformation()
        try:
            ipp = [float(v) for v in r.GetMetaData("0020|0032").split("\\")]
            iop = [float(v) for v in r.GetMetaData("0020|0037").split("\\")]
        except RuntimeError:
            raise ImageError(f"DICOM file '{f}' lacks Image Position/Orientation (Patient); "
                             "it cannot be placed in 3D.") from None
        if normal is None:
            normal = np.cross(iop[:3], iop[3:])
        positions.append(float(np.dot(normal, ipp)))
    return np.sort(np.asarray(positions))


def _check_even_slices(positions: np.ndarray, folder: Path) -> None:
    gaps = np.diff(positions)
    if np.any(gaps <= 1e-6):
        raise ImageError(f"DICOM series in '{folder}' has duplicate slice positions; it may mix several "
                         "acquisitions. Separate the series into their own folders.")
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median
    if np.any(bad):
        worst = float(gaps[bad].max())
        raise ImageError(f"DICOM series in '{folder}' has uneven slice spacing (gap of {worst:.2f} mm where "
                         f"{median:.2f} mm is typical): slices are missing. Re-export the complete series.")


def _check_dimensions(img: sitk.Image, path: Path) -> None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"'{path}' has {img.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a scalar CT/MR/PET volume is needed.")
    dim = img.GetDimension()
    if dim == 2 or (dim == 3 and 1 in img.GetSize()):
        raise ImageError(f"'{path}' is a 2D image (size {img.GetSize()}); a 3D volume is needed.")
    if dim != 3:
        raise ImageError(f"'{path}' is a {dim}D image (size {img.GetSize()}); a single 3D volume is needed. "
                         "Extract one time point or channel first.")


def validate_image(image: Image, source: str = "image") -> None:
    """Refuse volumes no model can use: empty, constant, NaN/Inf, absurd spacing."""
    arr = image.array
    if arr.ndim != 3:
        raise ImageError(f"{source}: expected a 3D volume, got {arr.ndim} dimensions {arr.shape}.")
    if arr.size == 0 or min(arr.shape) < 2:
        raise ImageError(f"{source}: volume of shape {arr.shape} is too small; each axis needs ≥ 2 voxels.")
    if not np.all(np.isfinite(arr)):
        n = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ImageError(f"{source}: {n} voxels are NaN or infinite. Fix or re-export the volume.")
    if float(arr.max()) == float(arr.min()):
        raise ImageError(f"{source}: all voxels have the value {float(arr.min())}; the volume is empty or "
                         "constant.")
    sp = np.asarray(image.spacing)
    if np.any(sp <= 0) or np.any(sp > MAX_SPACING_MM):
        raise ImageError(f"{source}: voxel spacing {tuple(sp)} mm is outside (0, {MAX_SPACING_MM}] mm; the "
                         "header is probably wrong.")
    if abs(abs(np.linalg.det(image.direction)) - 1.0) > 1e-3:
        raise ImageError(f"{source}: direction matrix is not orthonormal; the header is corrupt.")


# --- writing -----------------------------------------------------------------------------------

def write_image(image: Image, path: str | os.PathLike, overwrite: bool = True,
                compress: bool = True) -> Path:
    """Write NIfTI/NRRD/MHA keeping geometry exactly; atomic (temp file then rename)."""
    path = Path(path)
    if not path.name.lower().endswith(WRITABLE_SUFFIXES):
        raise ImageError(f"Cannot write '{path.name}': use .nii.gz, .nii, .nrrd or .mha.")
    if path.exists() and not overwrite:
        raise ImageError(f"'{path}' already exists; choose another name or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image.to_sitk(), tmp, compress)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:200]
