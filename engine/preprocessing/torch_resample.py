"""Resampling with torch, on the GPU when there is one (threaded on the CPU otherwise).

The same grids as :mod:`engine.preprocessing.resample` (output voxel ``j`` of an axis sits at input
index ``(start + j) · t / s``; the physical origin and direction are kept) and the same
interpolation: cubic B-spline for images (a recursive prefilter, then the cubic B-spline kernel —
what SimpleITK's ``sitkBSpline`` computes), nearest neighbour for labels, linear for maps. Each axis
is resampled on its own with its own order, so nnU-Net's "separate z" rule — in-plane cubic, nearest
across thick slices (:func:`nnunet_axis_orders`) — is one argument away. Positions past the input's
edge take the edge value, as SimpleITK's nearest-neighbour extrapolator does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

#: nnU-Net: resample the coarse axis separately when its spacing is ≥ 3× the finest.
SEPARATE_Z_RATIO = 3.0
#: The cubic B-spline prefilter's pole (Unser 1999), and how far its taps matter (|pole|^k < 1e-7).
_POLE = math.sqrt(3.0) - 2.0
_HALF_WIDTH = math.ceil(math.log(1e-7) / math.log(abs(_POLE)))


def nnunet_axis_orders(spacing: Sequence[float], target: Sequence[float], order: int = 3) -> list[int]:
    """nnU-Net's interpolation order per axis (z, y, x): ``order`` everywhere, except order 0 along an
    axis whose input or target spacing is ≥ 3× the finest (thick slices: interpolating across them
    invents anatomy)."""
    for sp in (spacing, target):
        ratio = max(sp) / min(sp)
        if ratio >= SEPARATE_Z_RATIO:
            coarse = int(np.argmax(sp))
            return [0 if a == coarse else order for a in range(3)]
    return [order] * 3


def _bspline_prefilter(x: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients along the first axis (mirror boundary, Unser's recursive filter).

    The recursion steps through the axis a row at a time; each step is too small to share between
    threads, and on a busy CPU waiting for the other threads costs more than the work, so on the CPU
    it runs on one thread."""
    n = x.shape[0]
    if n == 1:
        return x.clone()
    with _one_cpu_thread(x.device):
        x = x * 6.0
        powers = _POLE ** torch.arange(_HALF_WIDTH, dtype=x.dtype, device=x.device)
        causal = torch.empty_like(x)
        causal[0] = torch.tensordot(powers[:n], x[:_HALF_WIDTH], dims=1)
        for i in range(1, n):
            causal[i] = x[i] + _POLE * causal[i - 1]
        out = torch.empty_like(x)
        out[n - 1] = (_POLE / (_POLE * _POLE - 1.0)) * (causal[n - 1] + _POLE * causal[n - 2])
        for i in range(n - 2, -1, -1):
            out[i] = _POLE * (out[i + 1] - causal[i])
    return out


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mirror(index: torch.Tensor, n: int) -> torch.Tensor:
    """Indices reflected into [0, n) the way ITK's B-spline interpolator reads past an edge."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= n, period - index, index)


def _resample_first_axis(x: torch.Tensor, positions: torch.Tensor, order: int,
                         outside_zero: bool = False) -> torch.Tensor:
    """``x`` (contiguous) sampled at fractional ``positions`` along its first axis with interpolation
    ``order``; whole rows are copied, which is what makes this fast on the CPU too. Past the edge:
    the edge value, or 0 with ``outside_zero`` (labels more than half a voxel outside, as SimpleITK)."""
    n = x.shape[0]
    inside = positions.clamp(0.0, n - 1.0)
    beyond = (positions < -0.5) | (positions > n - 0.5)
    if order == 0:
        picked = x[torch.floor(inside + 0.5).long().clamp(max=n - 1)]
        if outside_zero:
            picked[beyond | (positions == n - 0.5)] = 0
        return picked
    base = torch.floor(inside)
    t = (inside - base).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    base = base.long()
    if order == 1:
        return x[base] * (1 - t) + x[(base + 1).clamp(max=n - 1)] * t
    if order != 3:
        raise ValueError(f"unsupported interpolation order {order} (0, 1 or 3)")
    # within half a voxel past the edge the spline itself is evaluated (mirrored), further out the
    # edge value is repeated
    spline_at = positions.clamp(-0.5, n - 0.5)
    base = torch.floor(spline_at)
    t = (spline_at - base).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    base = base.long()
    coefficients = _bspline_prefilter(x)
    weights = ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    out = coefficients[_mirror(base - 1, n)] * weights[0]
    for offset, weight in zip((0, 1, 2), weights[1:]):
        out += coefficients[_mirror(base + offset, n)] * weight
    if bool(beyond.any()):
        out[beyond] = x[torch.floor(inside[beyond] + 0.5).long()]
    return out


def resample_array(array: np.ndarray | torch.Tensor, spacing: Sequence[float], shape: Sequence[int],
                   target_spacing: Sequence[float], orders: Sequence[int], start: Sequence[int] = (0, 0, 0),
                   device: str | torch.device = "cpu", input_start: Sequence[float] = (0.0, 0.0, 0.0)
                   ) -> torch.Tensor:
    """A (z, y, x) array resampled onto ``shape`` voxels of ``target_spacing`` beginning at voxel
    ``start`` of that grid (a region of it), interpolating axis by axis with ``orders`` (z, y, x).
    ``input_start``: where the array itself begins on its own grid (it is a region too).

    Returns a tensor on ``device``: float32 for images, the input's dtype (0 outside the array) when
    every order is 0."""
    labels = all(o == 0 for o in orders)
    x = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array, device=device)
    if not labels:
        x = x.float()
    for axis in sorted(range(3), key=lambda a: x.shape[a] / max(1, shape[a]), reverse=True):
        # shrinking axes first keeps the intermediate arrays small
        steps = torch.arange(start[axis], start[axis] + shape[axis], dtype=torch.float64, device=x.device)
        positions = steps * (float(target_spacing[axis]) / float(spacing[axis])) - float(input_start[axis])
        if x.shape[axis] == shape[axis] and bool((positions - torch.arange(shape[axis], device=x.device)).abs()
                                                 .max() < 1e-6):
            continue  # the same grid along this axis
        moved = x.movedim(axis, 0).contiguous()
        x = _resample_first_axis(moved, positions, orders[axis], outside_zero=labels).movedim(0, axis)
    return x.contiguous()
