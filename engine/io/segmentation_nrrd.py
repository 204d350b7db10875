"""Slicer segmentation files (``.seg.nrrd``): a label map plus named, coloured segments.

The file is a plain 3D NRRD (one layer: segments do not overlap) whose custom header fields
(``key:=value``, which ITK's NRRD writer produces for every metadata entry) tell 3D Slicer how to
build a segmentation node. Field meanings follow Slicer's "Segmentation labelmap file format
(.seg.nrrd)" and its reader, ``vtkMRMLSegmentationStorageNode::ReadBinaryLabelmapRepresentation``.

One detail that matters: Slicer builds the shared labelmap of a layer from the ``SegmentN_Extent`` of
the *first* segment of that layer and ignores the extents of the others. A tight per-segment
extent would therefore crop the other segments away, and an empty first segment (e.g. no tumour
found) would empty them all. Slicer itself writes the layer's extent for every segment of a layer;
so does this writer: the bounding box of all labelled voxels, or ``0 -1 0 -1 0 -1`` when the label
map is empty.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from engine.utils.atomic import apply_umask
from engine.errors import ImageError
from engine.io.image import Image, write_itk

log = logging.getLogger(__name__)

SUFFIX = ".seg.nrrd"
EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)
TERMINOLOGY_TAG = "TerminologyEntry"
#: Representations Slicer shows on load: the stored labelmap and a 3D surface made from it.
CONTAINED_REPRESENTATIONS = "Binary labelmap|Closed surface|"


class SegmentationFileError(ImageError):
    """A segmentation cannot be written or read as a Slicer ``.seg.nrrd`` file."""


@dataclass
class SegmentInfo:
    """One segment: display name, voxel value in the label map, RGB colour in 0..1, and optionally
    the value of Slicer's ``TerminologyEntry`` tag (the ``~``-separated codes, with or without the
    ``TerminologyEntry:`` prefix)."""

    name: str
    value: int
    color: tuple[float, float, float]
    terminology: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip() or any(c in self.name for c in "\r\n"):
            raise ValueError(f"segment name {self.name!r} must be a non-empty single line")
        if int(self.value) != self.value or not 1 <= int(self.value) <= np.iinfo(np.uint16).max:
            raise ValueError(f"segment '{self.name}': label value {self.value} must be an integer in 1..65535 "
                             "(0 is background)")
        self.value = int(self.value)
        color = tuple(float(c) for c in self.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"segment '{self.name}': colour {self.color} must be three values in 0..1")
        self.color = color  # type: ignore[assignment]
        if self.terminology is not None:
            entry = self.terminology.strip()
            if entry.startswith(TERMINOLOGY_TAG + ":"):
                entry = entry[len(TERMINOLOGY_TAG) + 1:]
            entry = entry.rstrip("|")
            if not entry or any(c in entry for c in "|\r\n"):
                raise ValueError(f"segment '{self.name}': terminology {self.terminology!r} must be one line "
                                 "without '|'")
            self.terminology = entry


def write_segmentation_nrrd(labels: Image, path: str | os.PathLike, segments: Sequence[SegmentInfo]) -> Path:
    """Write ``labels`` (integer label map) as a Slicer ``.seg.nrrd`` listing every segment in ``segments``.

    Geometry is the label image's. Voxel values must be 0 or a segment's value; anything else is
    refused before a file is touched. Segments absent from the volume are still listed (empty in
    Slicer). The write is atomic: a temporary file in the same folder, then ``os.replace``.
    """
    path = Path(path)
    if not path.name.lower().endswith(SUFFIX):
        raise SegmentationFileError(f"'{path.name}': a Slicer segmentation file must end in '{SUFFIX}'.")
    segments = list(segments)
    _check_segments(segments)
    array = _label_array(labels, segments, path)

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(labels.spacing_xyz)
    img.SetOrigin(labels.origin)
    img.SetDirection(tuple(labels.direction.ravel().tolist()))
    for key, value in _header_fields(array, segments, _reference_geometry(labels)).items():
        img.SetMetaData(key, value)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write_itk(lambda: sitk.WriteImage(img, tmp, True), path)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("wrote segmentation %s (%d segments)", path, len(segments))
    return path


def read_segmentation_nrrd(path: str | os.PathLike) -> tuple[Image, list[SegmentInfo]]:
    """Read a single-layer ``.seg.nrrd`` (ours or Slicer's) as a label map and its segments.

    Segments are returned in file order with their label values; the label map keeps the file's
    unsigned integer type.
    """
    path = Path(path)
    if not path.is_file():
        raise SegmentationFileError(f"Segmentation file not found: '{path}'.")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SegmentationFileError(f"Cannot read '{path}' as NRRD ({str(exc).strip().splitlines()[-1]}).") from None
    meta = {key: img.GetMetaData(key) for key in img.GetMetaDataKeys()}
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise SegmentationFileError(
            f"'{path}' stores {img.GetNumberOfComponentsPerPixel()} layers (overlapping segments) or is not 3D; "
            "only single-layer segmentations can be read. In Slicer, export the segments to a labelmap first.")
    segments = _segments_from_header(meta, path)
    labels = Image.from_sitk(img, dtype=None)
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise SegmentationFileError(f"'{path}' has non-integer voxels ({labels.array.dtype}); not a label map.")
    return labels, segments


# --- writing helpers ----------------------------------------------------------------------------

def _check_segments(segments: list[SegmentInfo]) -> None:
    values = [s.value for s in segments]
    names = [s.name for s in segments]
    if len(set(values)) != len(values):
        raise SegmentationFileError(f"Segment label values must be unique; got {values}.")
    if len(set(names)) != len(names):
        raise SegmentationFileError(f"Segment names must be unique; got {names}.")


def _label_array(labels: Image, segments: list[SegmentInfo], path: Path) -> np.ndarray:
    array = np.asarray(labels.array)
    if array.ndim != 3:
        raise SegmentationFileError(f"Cannot write '{path.name}': the label map must be 3D, got shape {array.shape}.")
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)))
    if not integral:
        raise SegmentationFileError(f"Cannot write '{path.name}': the label map has non-integer values.")
    present = {int(v) for v in np.unique(array)} - {0}
    unknown = sorted(present - {s.value for s in segments})
    if unknown:
        listed = ", ".join(f"{s.value}={s.name}" for s in segments) or "none"
        raise SegmentationFileError(
            f"Cannot write '{path.name}': label values {unknown} have no segment (segments: {listed}). "
            "Add a SegmentInfo for each value or set those voxels to 0.")
    largest = max([s.value for s in segments], default=0)
    dtype = np.uint8 if largest <= np.iinfo(np.uint8).max else np.uint16
    return np.ascontiguousarray(array.astype(dtype))


def _layer_extent(array: np.ndarray) -> tuple[int, ...]:
    """IJK bounding box (i0 i1 j0 j1 k0 k1, inclusive) of all labelled voxels; array is (k, j, i)."""
    if not array.any():
        return EMPTY_EXTENT
    extent: list[int] = []
    for axis in (2, 1, 0):
        others = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(array.any(axis=others))
        extent += [int(occupied[0]), int(occupied[-1])]
    return tuple(extent)


def _reference_geometry(labels: Image) -> str:
    """Slicer's serialised "Reference image geometry": IJK→RAS matrix (16 values) and extent (6 values).

    With it, Slicer keeps the label map's full grid as the segmentation geometry (editing and saving
    stay on the CT's grid) instead of shrinking it to the labelled voxels."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = lps_to_ras @ labels.direction @ np.diag(labels.spacing_xyz)
    ijk_to_ras[:3, 3] = lps_to_ras @ np.asarray(labels.origin)
    nz, ny, nx = labels.shape
    values = [f"{v:.15g}" for v in ijk_to_ras.ravel()] + [str(v) for v in (0, nx - 1, 0, ny - 1, 0, nz - 1)]
    return "Reference image geometry|" + ";".join(values) + ";|&"


def _header_fields(array: np.ndarray, segments: list[SegmentInfo], reference_geometry: str) -> dict[str, str]:
    extent = " ".join(str(e) for e in _layer_extent(array))
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": CONTAINED_REPRESENTATIONS,
        "Segmentation_ConversionParameters": reference_geometry,
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, (segment, segment_id) in enumerate(zip(segments, _segment_ids(segments))):
        prefix = f"Segment{index}_"
        tags = f"{TERMINOLOGY_TAG}:{segment.terminology}|" if segment.terminology else ""
        fields.update({
            prefix + "ID": segment_id,
            prefix + "Name": segment.name,
            prefix + "NameAutoGenerated": "0",
            prefix + "Color": " ".join(f"{c:.6g}" for c in segment.color),
            prefix + "ColorAutoGenerated": "0",
            prefix + "LabelValue": str(segment.value),
            prefix + "Layer": "0",
            prefix + "Extent": extent,
            prefix + "Tags": tags,
        })
    return fields


def _segment_ids(segments: list[SegmentInfo]) -> list[str]:
    """Stable IDs derived from the names (scripts find segments by ID), unique within the file."""
    ids: list[str] = []
    for segment in segments:
        candidate = re.sub(r"[^0-9A-Za-z_.-]+", "_", segment.name).strip("_") or "Segment"
        while candidate in ids:
            candidate = f"{candidate}_{segment.value}"
        ids.append(candidate)
    return ids


# --- reading helpers ----------------------------------------------------------------------------

def _segments_from_header(meta: dict[str, str], path: Path) -> list[SegmentInfo]:
    segments: list[SegmentInfo] = []
    index = 0
    while f"Segment{index}_ID" in meta:
        prefix = f"Segment{index}_"
        layer = meta.get(prefix + "Layer", "0").strip()
        if layer not in ("", "0"):
            raise SegmentationFileError(f"'{path}': segment {index} is in layer {layer}; only single-layer "
                                        "segmentations can be read.")
        if prefix + "LabelValue" not in meta:
            raise SegmentationFileError(f"'{path}': segment {index} has no LabelValue; this is a legacy "
                                        "(one volume per segment) file. Re-save it with a recent Slicer.")
        try:
            color = tuple(float(c) for c in meta.get(prefix + "Color", "0.5 0.5 0.5").split())
            segments.append(SegmentInfo(
                name=meta.get(prefix + "Name") or meta[prefix + "ID"],
                value=int(meta[prefix + "LabelValue"]),
                color=color,  # type: ignore[arg-type]
                terminology=_terminology_from_tags(meta.get(prefix + "Tags", "")),
            ))
        except ValueError as exc:
            raise SegmentationFileError(f"'{path}': segment {index} has an invalid header field ({exc}).") from None
        index += 1
    if index == 0:
        raise SegmentationFileError(f"'{path}' has no Segment0_ID field: it is a plain NRRD volume, not a Slicer "
                                    "segmentation. Read it with read_label instead.")
    return segments


def _terminology_from_tags(tags: str) -> str | None:
    for pair in tags.split("|"):
        key, _, value = pair.partition(":")
        if key == TERMINOLOGY_TAG and value:
            return value
    return None
