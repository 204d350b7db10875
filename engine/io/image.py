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

import errno
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from engine.utils.atomic import apply_umask
from engine.errors import ImageError
from engine.io.integrity import check_image_file
from engine.io.quiet import quiet_itk

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
    With ``validate`` the volume is checked for the problems listed in :func:`validate_image`. Files
    are checked for completeness first (:mod:`engine.io.integrity`: ITK would read a truncated file as
    zeros), and a DICOM series must stack into one volume: same slice size, orientation and pixel
    spacing, evenly spaced slices.
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
    check_image_file(path)  # ITK reads a truncated file as zeros without a word
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with quiet_itk():
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise ImageError(f"Cannot read '{path}': the file is corrupt or not a {path.suffix} image "
                             f"({_first_line(exc)}).") from None
    return img, None


def list_dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """Series UID → sorted slice files of every DICOM series found directly in ``folder``."""
    folder = str(folder)
    series: dict[str, list[str]] = {}
    with quiet_itk():  # GDCM complains on the console about every non-DICOM file in the folder
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
    with quiet_itk():
        positions = _check_series_headers(files, folder)
    _check_even_slices(positions, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    with quiet_itk():
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise ImageError(f"Cannot read the DICOM series in '{folder}' ({_first_line(exc)}).") from None
    modality = None
    if reader.HasMetaDataKey(0, "0008|0060"):
        modality = reader.GetMetaData(0, "0008|0060").strip() or None
    return img, modality


def _dicom_numbers(reader: sitk.ImageFileReader, tag: str) -> list[float] | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(tag).split("\\")]
    except ValueError:
        return None


def _check_series_headers(files: list[str], folder: Path) -> np.ndarray:
    """Sorted slice positions along the normal; refuse slices that do not stack into one volume."""
    positions, first = [], None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise ImageError(f"DICOM file '{f}' of the series in '{folder}' is corrupt or unreadable. "
                             "Re-export the complete series.") from None
        ipp, iop = _dicom_numbers(r, "0020|0032"), _dicom_numbers(r, "0020|0037")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            raise ImageError(f"DICOM file '{f}' lacks Image Position/Orientation (Patient); "
                             "it cannot be placed in 3D.")
        info = {"size": tuple(r.GetSize()[:2]), "orientation": np.asarray(iop),
                "pixel spacing": np.asarray(_dicom_numbers(r, "0028|0030") or r.GetSpacing()[:2])}
        if first is None:
            first = (f, info, np.cross(iop[:3], iop[3:]))
        else:
            _compare_slices(first[0], first[1], f, info, folder)
        positions.append(float(np.dot(first[2], ipp)))
    return np.sort(np.asarray(positions))


def _compare_slices(ref_file: str, ref: dict, file: str, info: dict, folder: Path) -> None:
    if info["size"] != ref["size"]:
        raise ImageError(f"DICOM series in '{folder}' mixes slice sizes: '{Path(file).name}' is "
                         f"{info['size'][0]}×{info['size'][1]} pixels but '{Path(ref_file).name}' is "
                         f"{ref['size'][0]}×{ref['size'][1]}. Slices of one volume share a size; separate "
                         "the series or re-export it.")
    if not np.allclose(info["orientation"], ref["orientation"], atol=1e-3):
        raise ImageError(f"DICOM series in '{folder}' mixes slice orientations ('{Path(file).name}' is "
                         f"oriented differently from '{Path(ref_file).name}'); it is not one volume. "
                         "Separate the series or re-export it.")
    a, b = info["pixel spacing"], ref["pixel spacing"]
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4):
        raise ImageError(f"DICOM series in '{folder}' mixes pixel spacings ('{Path(file).name}': "
                         f"{' × '.join(f'{v:g}' for v in a)} mm, '{Path(ref_file).name}': "
                         f"{' × '.join(f'{v:g}' for v in b)} mm); it is not one volume. "
                         "Re-export the series.")


def _check_even_slices(positions: np.ndarray, folder: Path) -> None:
    gaps = np.diff(positions)
    if np.any(gaps <= 1e-6):
        raise ImageError(f"DICOM series in '{folder}' has duplicate slice positions; it may mix several "
                         "acquisitions. Separate the series into their own folders.")
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median
    if not np.any(bad):
        return
    worst = float(gaps[bad].max()) if np.any(gaps[bad] > median) else float(gaps[bad].min())
    ratio = worst / median
    if ratio > 1.5 and abs(ratio - round(ratio)) <= SLICE_GAP_TOLERANCE * round(ratio):
        missing = int(sum(round(g / median) - 1 for g in gaps[bad] if g > median))
        raise ImageError(f"DICOM series in '{folder}' has {missing} missing slice(s): a gap of "
                         f"{worst:.2f} mm where slices are {median:.2f} mm apart (uneven slice spacing). "
                         "Re-export the complete series.")
    raise ImageError(f"DICOM series in '{folder}' has uneven slice spacing: gaps from "
                     f"{float(gaps.min()):.2f} to {float(gaps.max()):.2f} mm between slices, so it is not one "
                     "evenly sampled volume. Re-export the series, or resample it to even spacing first.")


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
    size = " × ".join(str(n) for n in arr.shape)
    if arr.size == 0:
        raise ImageError(f"{source}: the volume holds no voxels (size {size}); an image with voxels is "
                         "needed.")
    if min(arr.shape) < 2:
        raise ImageError(f"{source}: volume of size {size} voxels is too small; each axis needs ≥ 2 voxels.")
    finite = np.isfinite(arr)
    if not finite.all():
        n = int(arr.size - np.count_nonzero(finite))
        raise ImageError(f"{source}: {n:,} of {arr.size:,} voxels are NaN or infinite (not numbers), so the "
                         "image cannot be used. Fix or re-export the volume.")
    low, high = float(arr.min()), float(arr.max())
    if low == high:
        raise ImageError(f"{source}: the image holds one value only (every voxel is {low:g}); an empty or "
                         "constant volume cannot be segmented. Check that the right image was exported.")
    sp = np.asarray(image.spacing)
    if np.any(sp <= 0) or np.any(sp > MAX_SPACING_MM):
        shown = " × ".join(f"{float(v):g}" for v in sp)
        raise ImageError(f"{source}: voxel spacing {shown} mm is outside (0, {MAX_SPACING_MM}] mm; the "
                         "header is probably wrong.")
    if abs(abs(np.linalg.det(image.direction)) - 1.0) > 1e-3:
        raise ImageError(f"{source}: direction matrix is not orthonormal; the header is corrupt.")


# --- writing -----------------------------------------------------------------------------------


def write_itk(write: Callable[[], None], path: Path) -> None:
    """Run an ITK write; its failure (a full disk, a vanished folder) becomes an ``OSError`` naming the
    file, which callers report as the user's to fix rather than as a bug."""
    try:
        write()
    except RuntimeError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "Description" in line), "")
        raise OSError(errno.EIO, f"cannot write {path.name}"
                      + (f" ({reason.split(':', 1)[-1].strip()})" if reason else "")) from exc

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
        write_itk(lambda: sitk.WriteImage(image.to_sitk(), tmp, compress), path)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:200]
