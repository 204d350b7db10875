"""Geometric and noise primitives for the phantoms: analytic shapes on a voxel grid in millimetres.

Every phantom is drawn in a *body frame* (millimetres, axes ``z`` superior, ``y`` posterior,
``x`` patient-left, i.e. the LPS directions of the array axes). A :class:`Grid` maps voxel
indices into that frame, with an in-plane rotation and a shift, so that the same anatomy
description yields a slightly rotated and displaced scan per case. Shapes are analytic
(:class:`Ellipsoid`, :class:`Tube`, :class:`Segment`, :class:`Slab`); they are evaluated only
inside their bounding box and can also be queried at arbitrary points (ray casting), which lets
the generators *plan* geometry (e.g. how far a tumour may grow before it touches the aorta)
before anything is voxelised.

Everything is vectorised NumPy / scipy.ndimage; nothing loops over voxels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

Vec3 = tuple[float, float, float]
Box = tuple[np.ndarray, np.ndarray]  # (lo, hi) corners in body mm, (z, y, x)


# --- smooth 1D paths -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wiggle:
    """A smooth function of z: ``base + slope·z + Σ amp·sin(2π z / period + phase)``.

    Used for centre lines and radii of tubes so that organs drift and bend gently along z.
    """

    base: float
    slope: float = 0.0
    terms: tuple[tuple[float, float, float], ...] = ()

    def __call__(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        out = np.float32(self.base) + np.float32(self.slope) * z
        for amp, period, phase in self.terms:
            out = out + np.float32(amp) * np.sin(np.float32(2 * math.pi / period) * z + np.float32(phase))
        return out

    def shifted(self, delta: float) -> "Wiggle":
        return Wiggle(self.base + delta, self.slope, self.terms)

    def plus(self, other: "Wiggle") -> "Wiggle":
        return Wiggle(self.base + other.base, self.slope + other.slope, self.terms + other.terms)

    @classmethod
    def random(cls, rng: np.random.Generator, base: float, amp: float, slope: float = 0.0,
               period: tuple[float, float] = (120.0, 300.0)) -> "Wiggle":
        """A gentle random curve around ``base``: one sinusoid of amplitude ≤ ``amp``."""
        return cls(base, float(rng.uniform(-slope, slope)),
                   ((float(rng.uniform(0, amp)), float(rng.uniform(*period)), float(rng.uniform(0, 2 * np.pi))),))


# --- shapes --------------------------------------------------------------------------------------

class Shape(ABC):
    """An analytic region: ``field(z, y, x) <= 1`` inside; larger values further out.

    ``field`` accepts broadcastable arrays in body millimetres, so it serves both voxelisation
    and point queries. ``bounds(scale)`` bounds the region ``field <= scale``.
    """

    @abstractmethod
    def field(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def bounds(self, scale: float = 1.0, z_range: tuple[float, float] | None = None) -> Box:
        """Box around ``field <= scale``; ``z_range`` may restrict the heights considered."""

    def contains(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return self.field(z, y, x) <= scale


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Axis-aligned ellipsoid (in the body frame); ``field`` is the normalised radius."""

    centre: Vec3
    radii: Vec3

    def field(self, z, y, x):
        c, r = self.centre, self.radii
        return np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2)

    def bounds(self, scale: float = 1.0, z_range: tuple[float, float] | None = None) -> Box:
        c, r = np.asarray(self.centre), np.asarray(self.radii) * scale
        return c - r, c + r

    def scaled(self, factor: float | Vec3) -> "Ellipsoid":
        return Ellipsoid(self.centre, tuple(np.asarray(self.radii) * np.asarray(factor)))  # type: ignore[arg-type]

    def grown(self, mm: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, tuple(r + mm for r in self.radii))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Tube(Shape):
    """A tube along z between ``z0`` and ``z1`` with an elliptic cross-section.

    Centre line and semi-axes are :class:`Wiggle` functions of z. ``field`` is the normalised
    elliptic radius within the slab and ``inf`` outside it.
    """

    z0: float
    z1: float
    cy: Wiggle
    cx: Wiggle
    ry: Wiggle
    rx: Wiggle

    def field(self, z, y, x):
        z = np.asarray(z, dtype=np.float32)
        ry = np.maximum(self.ry(z), 1e-3)
        rx = np.maximum(self.rx(z), 1e-3)
        f = np.sqrt(((y - self.cy(z)) / ry) ** 2 + ((x - self.cx(z)) / rx) ** 2)
        return np.where((z >= self.z0) & (z <= self.z1), f, np.float32(np.inf))

    def radial_mm(self, z, y, x) -> tuple[np.ndarray, np.ndarray]:
        """Distance (mm) from the centre line and polar angle (rad, 0 = +x/left, π/2 = +y/posterior)."""
        z = np.asarray(z, dtype=np.float32)
        dy, dx = y - self.cy(z), x - self.cx(z)
        return np.sqrt(dy * dy + dx * dx), np.arctan2(dy, dx)

    def bounds(self, scale: float = 1.0, z_range: tuple[float, float] | None = None) -> Box:
        z0, z1 = self.z0, self.z1
        if z_range is not None:
            z0, z1 = max(z0, z_range[0]), min(z1, z_range[1])
            if z1 < z0:
                return np.array([z0, 0.0, 0.0]), np.array([z0, 0.0, 0.0])
        zs = np.linspace(z0, z1, 257, dtype=np.float32)
        cy, cx = self.cy(zs), self.cx(zs)
        ry, rx = np.abs(self.ry(zs)) * scale, np.abs(self.rx(zs)) * scale
        lo = np.array([z0, (cy - ry).min(), (cx - rx).min()])
        hi = np.array([z1, (cy + ry).max(), (cx + rx).max()])
        return lo, hi

    def with_radius(self, ry: float | Wiggle, rx: float | Wiggle | None = None) -> "Tube":
        ry_w = ry if isinstance(ry, Wiggle) else Wiggle(float(ry))
        rx_w = ry_w if rx is None else (rx if isinstance(rx, Wiggle) else Wiggle(float(rx)))
        return Tube(self.z0, self.z1, self.cy, self.cx, ry_w, rx_w)


@dataclass(frozen=True)
class Segment(Shape):
    """A capsule: points within ``radius`` of the segment ``p0``–``p1`` (vessels, bronchi)."""

    p0: Vec3
    p1: Vec3
    radius: float

    def field(self, z, y, x):
        p0 = np.asarray(self.p0, dtype=np.float32)
        d = np.asarray(self.p1, dtype=np.float32) - p0
        dd = float(d @ d) or 1e-6
        rz, ry, rx = z - p0[0], y - p0[1], x - p0[2]
        t = np.clip((rz * d[0] + ry * d[1] + rx * d[2]) / dd, 0.0, 1.0)
        return np.sqrt((rz - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rx - t * d[2]) ** 2) / self.radius

    def bounds(self, scale: float = 1.0, z_range: tuple[float, float] | None = None) -> Box:
        a, b = np.asarray(self.p0), np.asarray(self.p1)
        r = self.radius * scale
        return np.minimum(a, b) - r, np.maximum(a, b) + r


@dataclass(frozen=True)
class Slab(Shape):
    """A curved plate ``|z - mid(y, x)| <= half_thickness`` with ``mid = z0 + slope_y·y + curv_x·x²``.

    Models plate-like bone such as the skull base (sloping down posteriorly along the clivus).
    """

    z0: float
    half_thickness: float
    slope_y: float = 0.0
    curv_x: float = 0.0
    extent: float = 1000.0

    def mid(self, y, x):
        return self.z0 + self.slope_y * y + self.curv_x * x * x

    def field(self, z, y, x):
        return np.abs(z - self.mid(y, x)) / self.half_thickness

    def above(self, z, y, x) -> np.ndarray:
        """Points above the plate's upper surface (e.g. intracranial)."""
        return z > self.mid(y, x) + self.half_thickness

    def bounds(self, scale: float = 1.0, z_range: tuple[float, float] | None = None) -> Box:
        e = self.extent
        return np.array([-e, -e, -e]), np.array([e, e, e])


# --- the voxel grid ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A voxel grid placed in the body frame.

    ``shift`` is the body-frame position (z, y, x, mm) of the grid centre, ``angle_deg`` an
    in-plane rotation of the anatomy relative to the grid axes: per-case values of both give
    the variation in patient position that real scans have.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    angle_deg: float = 0.0
    shift: Vec3 = (0.0, 0.0, 0.0)

    @property
    def centre_index(self) -> np.ndarray:
        return (np.asarray(self.shape, dtype=np.float64) - 1) / 2

    @property
    def half_extent(self) -> np.ndarray:
        """Half the field of view (mm) along z, y, x."""
        return self.centre_index * np.asarray(self.spacing)

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def inplane_spacing(self) -> float:
        return float(max(self.spacing[1], self.spacing[2]))

    def _rot(self) -> tuple[float, float]:
        a = math.radians(self.angle_deg)
        return math.cos(a), math.sin(a)

    def axes(self, sl: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame coordinates of the voxels in ``sl``: z as (n,1,1), y and x as (1,m,l), float32."""
        sl = sl or tuple(slice(0, n) for n in self.shape)  # type: ignore[assignment]
        c, sp, sh = self.centre_index, self.spacing, self.shift
        k = (np.arange(sl[0].start, sl[0].stop) - c[0]) * sp[0] + sh[0]
        v = (np.arange(sl[1].start, sl[1].stop) - c[1]) * sp[1]
        u = (np.arange(sl[2].start, sl[2].stop) - c[2]) * sp[2]
        co, si = self._rot()
        y = co * v[:, None] - si * u[None, :] + sh[1]
        x = si * v[:, None] + co * u[None, :] + sh[2]
        return (k.astype(np.float32)[:, None, None], y.astype(np.float32)[None], x.astype(np.float32)[None])

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (k, j, i) indices of body-frame points (..., 3) in (z, y, x)."""
        p = np.asarray(points, dtype=np.float64)
        c, sp, sh = self.centre_index, np.asarray(self.spacing), np.asarray(self.shift)
        co, si = self._rot()
        dy, dx = p[..., 1] - sh[1], p[..., 2] - sh[2]
        v = co * dy + si * dx
        u = -si * dy + co * dx
        return np.stack([(p[..., 0] - sh[0]) / sp[0] + c[0], v / sp[1] + c[1], u / sp[2] + c[2]], axis=-1)

    def to_body(self, index: np.ndarray) -> np.ndarray:
        """Body-frame points (z, y, x) of continuous voxel indices (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        c, sp, sh = self.centre_index, np.asarray(self.spacing), np.asarray(self.shift)
        w = (idx - c) * sp
        co, si = self._rot()
        return np.stack([w[..., 0] + sh[0], co * w[..., 1] - si * w[..., 2] + sh[1],
                         si * w[..., 1] + co * w[..., 2] + sh[2]], axis=-1)

    def slices(self, box: Box) -> tuple[slice, slice, slice] | None:
        """Index slices covering a body-frame box (None when it misses the grid)."""
        lo, hi = np.asarray(box[0], float), np.asarray(box[1], float)
        corners = np.array([[z, y, x] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
        idx = self.to_index(corners)
        a = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
        b = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.asarray(self.shape))
        if np.any(b <= a):
            return None
        return tuple(slice(int(i), int(j)) for i, j in zip(a, b))  # type: ignore[return-value]

    def evaluate(self, fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], box: Box,
                 fill: float | bool = 0, dtype: type | np.dtype = np.float32) -> np.ndarray:
        """A full-grid array with ``fn(z, y, x)`` inside the box's slices and ``fill`` elsewhere."""
        out = np.full(self.shape, fill, dtype=dtype)
        sl = self.slices(box)
        if sl is not None:
            out[sl] = np.broadcast_to(fn(*self.axes(sl)), out[sl].shape)
        return out

    @property
    def z_range(self) -> tuple[float, float]:
        """Body-frame heights covered by the grid (one voxel of margin)."""
        h = self.half_extent[0] + self.spacing[0]
        return float(self.shift[0] - h), float(self.shift[0] + h)

    def field(self, shape: Shape, scale: float = 1.0) -> np.ndarray:
        """``shape.field`` on the grid (``inf`` outside the box where ``field <= scale``)."""
        return self.evaluate(shape.field, shape.bounds(scale, self.z_range), fill=np.inf)

    def mask(self, shape: Shape, scale: float = 1.0) -> np.ndarray:
        """Voxel centres inside ``shape`` (``field <= scale``), as a boolean array."""
        return self.evaluate(lambda z, y, x: shape.field(z, y, x) <= scale, shape.bounds(scale, self.z_range),
                             fill=False, dtype=bool)


# --- ray casting (planning geometry before voxelising) ----------------------------------------

def ray_hits(shapes: Sequence[Shape], origin: np.ndarray, angles: np.ndarray, max_mm: float,
             step_mm: float = 0.25) -> np.ndarray:
    """Distance along in-plane rays to the first point inside any shape (``inf`` if none).

    ``origin`` is (..., 3) body points (z, y, x), ``angles`` broadcast with its leading shape
    (0 = +x, π/2 = +y). Rays stay in their axial plane, the way invasion is judged on CT slices.
    """
    origin = np.asarray(origin, dtype=np.float32)
    angles = np.asarray(angles, dtype=np.float32)
    t = np.arange(0.0, max_mm + step_mm, step_mm, dtype=np.float32)
    z = origin[..., 0, None] + 0 * t
    y = origin[..., 1, None] + np.sin(angles)[..., None] * t
    x = origin[..., 2, None] + np.cos(angles)[..., None] * t
    hit = np.zeros(np.broadcast_shapes(z.shape, y.shape), dtype=bool)
    for s in shapes:
        hit |= s.contains(z, y, x)
    first = np.where(hit.any(axis=-1), t[np.argmax(hit, axis=-1)], np.inf)
    return first


# --- noise and blur ----------------------------------------------------------------------------

def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float | Sequence[float]) -> np.ndarray:
    """Gaussian-correlated noise with zero mean and unit standard deviation (float32).

    Large correlation lengths are drawn on a coarser grid and interpolated up, which keeps the
    cost independent of the kernel size (a 15-megavoxel volume stays well under a second).
    """
    shape = tuple(int(s) for s in shape)
    sig = np.broadcast_to(np.asarray(sigma_vox, dtype=np.float64), (3,))
    factor = np.maximum(np.floor(sig / 2.0), 1).astype(int)
    coarse = tuple(n if f == 1 else int(math.ceil(n / f)) + 2 for n, f in zip(shape, factor))
    white = rng.standard_normal(coarse, dtype=np.float32)
    field_ = ndimage.gaussian_filter(white, sigma=sig / factor, mode="wrap")
    if np.any(factor > 1):
        field_ = ndimage.zoom(field_, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest",
                              grid_mode=True)
        field_ = field_[: shape[0], : shape[1], : shape[2]]
    field_ = field_ - field_.mean()
    std = float(field_.std()) or 1.0
    return (field_ / std).astype(np.float32, copy=False)


def blur(volume: np.ndarray, sigma_mm: float | Sequence[float], spacing: Sequence[float],
         min_sigma_vox: float = 0.0) -> np.ndarray:
    """Gaussian blur with a width in mm: the scanner's point-spread / partial-volume effect."""
    sig = np.maximum(np.asarray(sigma_mm, dtype=np.float64) / np.asarray(spacing, dtype=np.float64), min_sigma_vox)
    return ndimage.gaussian_filter(volume.astype(np.float32, copy=False), sigma=sig, mode="nearest")


def crop_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...] | None:
    """Index slices of the bounding box of ``mask`` padded by ``pad`` voxels (None if empty)."""
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], \
        np.nonzero(mask.any(axis=(0, 1)))[0]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(slice(max(int(i[0]) - pad, 0), min(int(i[-1]) + pad + 1, n)) for i, n in zip(idx, mask.shape))


def touches(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` dilated by one voxel (6-neighbourhood) overlaps ``b``."""
    sl = crop_box(a, pad=1)
    if sl is None:
        return False
    grown = ndimage.binary_dilation(a[sl], structure=ndimage.generate_binary_structure(3, 1))
    return bool(np.any(grown & b[sl]))


@dataclass
class Canvas:
    """A tissue map painted structure by structure, later rendered to intensities and labels.

    Painting in anatomical order (outer to inner, organs over fat, tumour last) gives
    mutually exclusive regions, so the label map and the image always agree.
    """

    grid: Grid
    tissues: Sequence[str]
    map: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if len(self.tissues) > 255:
            raise ValueError("too many tissues")
        self.ids = {name: i for i, name in enumerate(self.tissues)}
        self.map = np.zeros(self.grid.shape, dtype=np.uint8)

    def _lut(self, names: Sequence[str]) -> np.ndarray:
        lut = np.zeros(256, dtype=bool)
        lut[[self.ids[n] for n in names]] = True
        return lut

    def paint(self, name: str, mask: np.ndarray, only_over: Sequence[str] | None = None,
              not_over: Sequence[str] | None = None) -> np.ndarray:
        """Set ``mask`` voxels to tissue ``name``, optionally only over / never over some tissues.

        Returns the voxels actually painted.
        """
        m = mask
        if only_over is not None:
            m = m & self._lut(only_over)[self.map]
        if not_over is not None:
            m = m & ~self._lut(not_over)[self.map]
        self.map[m] = self.ids[name]
        return m

    def where(self, *names: str) -> np.ndarray:
        return self._lut(names)[self.map]

    def render(self, mean: dict[str, float], texture_amp: dict[str, float] | None = None,
               texture: np.ndarray | None = None) -> np.ndarray:
        """Intensity image: per-tissue mean plus a per-tissue amplitude × a shared texture field."""
        lut_mean = np.zeros(256, dtype=np.float32)
        for name, value in mean.items():
            lut_mean[self.ids[name]] = value
        img = lut_mean[self.map]
        if texture is not None and texture_amp:
            lut_amp = np.zeros(256, dtype=np.float32)
            for name, value in texture_amp.items():
                lut_amp[self.ids[name]] = value
            img += lut_amp[self.map] * texture
        return img

    def labels(self, mapping: dict[str, int]) -> np.ndarray:
        """uint8 label map from tissue → label (unlisted tissues are background)."""
        lut = np.zeros(256, dtype=np.uint8)
        for name, value in mapping.items():
            lut[self.ids[name]] = value
        return lut[self.map]
