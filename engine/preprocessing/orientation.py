"""One canonical voxel orientation for every network input, with an exact inverse.

The same patient can be stored with its voxel axes in any of the 48 signed axis permutations
(``[z, y, x]`` arrays of a sagittal acquisition, a flipped export, ``DICOMOrient`` output, ...). A
network only sees the array, so it would see 48 different images. Before anything else, preprocessing
reorders the voxels into one orientation named by a DICOM-style code (``"LPS"``: index axes i, j, k run
towards patient left, posterior and superior — ITK's identity direction), and maps every output back.

The reordering is an exact permutation and flip of the voxels (no interpolation), so the canonical
array is bit-identical whichever of the 48 storages the file used. An oblique direction is treated
as the closest axis-aligned orientation, chosen like ITK's ``DICOMOrientImageFilter`` does; its
residual rotation stays in the direction matrix and resampling keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.io.image import Image

#: Per physical axis (x, y, z of LPS), the letter a code uses for an index axis running towards +/−.
_LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("S", "I")}


def _axis_of(letter: str) -> tuple[int, int]:
    """Physical axis (0 x, 1 y, 2 z) and sign (+1 towards L/P/S) of one letter of a code."""
    for axis, (plus, minus) in _LETTERS.items():
        if letter == plus:
            return axis, 1
        if letter == minus:
            return axis, -1
    raise ValueError(f"'{letter}' is not an orientation letter (L, R, P, A, S, I)")


def check_orientation(code: str) -> str:
    """The code in upper case, or ValueError when it does not name each patient axis once."""
    code = str(code).upper()
    if len(code) != 3:
        raise ValueError(f"an orientation code has three letters (such as LPS), got '{code}'")
    if sorted(_axis_of(c)[0] for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation '{code}' does not name each of the three patient axes once")
    return code


def closest_axes(direction: np.ndarray) -> list[tuple[int, int]]:
    """For each index axis i, j, k: the physical axis it runs closest to and the sign.

    Greedy like ITK's ``DICOMOrientation``: the largest absolute direction cosine fixes its index and
    physical axis, which are then taken out; ties go to the later entry, as ITK's ordered map does.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    result: dict[int, tuple[int, int]] = {}
    rows, cols = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        entries = [(abs(d[r, c]), r, c) for r in sorted(rows) for c in sorted(cols)]
        top = max(e[0] for e in entries)
        _, r, c = [e for e in entries if e[0] == top][-1]   # ties: the last in (row, column) order
        result[c] = (r, 1 if d[r, c] >= 0 else -1)
        rows.discard(r)
        cols.discard(c)
    return [result[c] for c in range(3)]


def orientation_code(direction: np.ndarray) -> str:
    """The closest DICOM-style orientation code of a direction matrix (identity → ``"LPS"``)."""
    return "".join(_LETTERS[axis][0 if sign > 0 else 1] for axis, sign in closest_axes(direction))


@dataclass
class Reorientation:
    """How an input's voxels were reordered into the canonical orientation, and the input's geometry
    (enough to put any canonical-grid array back on the input's own grid).

    ``axes[b]`` is the input array axis that canonical array axis ``b`` came from (``[z, y, x]`` order),
    ``flips[b]`` whether that axis was then reversed.
    """

    orientation: str
    axes: list[int]
    flips: list[bool]
    input_shape: list[int]
    input_spacing: list[float]
    input_origin: list[float]
    input_direction: list[float]

    @property
    def is_identity(self) -> bool:
        return self.axes == [0, 1, 2] and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """An input-grid array (its last three axes ``[z, y, x]``) in the canonical voxel order."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        out = np.transpose(array, list(range(lead)) + [lead + a for a in self.axes])
        flipped = tuple(lead + b for b, f in enumerate(self.flips) if f)
        return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)

    def to_input(self, array: np.ndarray) -> np.ndarray:
        """A canonical-grid array (last three axes) back in the input's voxel order."""
        if self.is_identity:
            return array
        lead = array.ndim - 3
        flipped = tuple(lead + b for b, f in enumerate(self.flips) if f)
        out = np.flip(array, flipped) if flipped else array
        inverse = list(np.argsort(self.axes))
        return np.ascontiguousarray(np.transpose(out, list(range(lead)) + [lead + int(a) for a in inverse]))

    def canonical_image(self, image: Image) -> Image:
        """``image`` (on the input's grid) with its voxels reordered and its geometry rewritten so that
        every voxel keeps its physical position."""
        if self.is_identity:
            return image
        direction = np.asarray(self.input_direction).reshape(3, 3)
        spacing = np.asarray(self.input_spacing)
        # ITK index axis c is array axis 2 - c
        src_itk = [2 - self.axes[2 - c] for c in range(3)]
        flip_itk = [self.flips[2 - c] for c in range(3)]
        first = np.array([self.input_shape[2 - m] - 1 if flip_itk[c] else 0 for c, m in enumerate(src_itk)],
                         dtype=np.float64)
        start = np.zeros(3)
        for c, m in enumerate(src_itk):
            start[m] = first[c]
        origin = np.asarray(self.input_origin) + direction @ (start * spacing[::-1])
        new_direction = np.stack([direction[:, m] * (-1.0 if flip_itk[c] else 1.0)
                                  for c, m in enumerate(src_itk)], axis=1)
        new_spacing = [self.input_spacing[a] for a in self.axes]
        return Image(self.to_canonical(image.array), new_spacing, tuple(origin), new_direction,
                     image.modality)

    def input_image(self, array: np.ndarray, modality: str | None = None) -> Image:
        """A canonical-grid array back on the input's grid, with the input's geometry."""
        return Image(self.to_input(array), self.input_spacing, self.input_origin,
                     np.asarray(self.input_direction).reshape(3, 3), modality)


def reorientation(image: Image, orientation: str) -> Reorientation:
    """The exact voxel reordering that brings ``image`` to ``orientation`` (closest axis-aligned one
    for an oblique direction)."""
    orientation = check_orientation(orientation)
    target = [_axis_of(c) for c in orientation]              # per canonical ITK axis: physical axis, sign
    current = closest_axes(image.direction)                  # per input ITK axis
    by_physical = {axis: (m, sign) for m, (axis, sign) in enumerate(current)}
    axes_itk, flips_itk = [], []
    for axis, sign in target:
        m, s = by_physical[axis]
        axes_itk.append(m)
        flips_itk.append(s != sign)
    # array axis b is ITK axis 2 - b
    axes = [2 - axes_itk[2 - b] for b in range(3)]
    flips = [flips_itk[2 - b] for b in range(3)]
    return Reorientation(orientation, axes, flips, list(image.shape), list(image.spacing), list(image.origin),
                         image.direction.ravel().tolist())
