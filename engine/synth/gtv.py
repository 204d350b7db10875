"""Lung GTV phantom: chest CT (HU) with one to three small nodules, label GTV.

Built for slice-wise pipelines (slice classifier → segmenter): nodules appear on a minority of
slices and take less than 0.1 % of the voxels of a scan (radii are scaled down to a volume
budget when needed). Every case has at least one nodule. They are deliberately not found by
thresholding: solid nodules have the HU of vessels, heart and chest wall, some are
juxtapleural or juxtamediastinal (touching soft tissue of the same density), some are
part-solid (ground glass, between lung and soft tissue), and many pulmonary vessels cross the
lungs. No stages: this task is segmentation only (no ``stages.csv``).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from engine.data.dataset import CaseTargets, DatasetDescription
from engine.synth.common import PhantomCase, Preset, finish_ct, make_grid, make_images, texture_field
from engine.synth.shapes import Canvas, Ellipsoid, Grid
from engine.synth.thorax import TISSUES, ct_values, paint_thorax, sample_thorax
from engine.tasks.gtv import TASK as _DECLARATION

log = logging.getLogger(__name__)

TASK = _DECLARATION.name
HAS_TARGETS = False
PRESETS = {
    "small": Preset((48, 96, 96), (5.0, 3.6, 3.6)),
    "realistic": Preset((120, 512, 512), (3.0, 0.98, 0.98)),
}
LABELS = _DECLARATION.label_map
#: Largest share of voxels all nodules together may take (below 0.1 %: GTVs are rare on a chest CT).
MAX_TUMOUR_FRACTION = 0.0008


def description() -> DatasetDescription:
    return DatasetDescription(
        name="SyntheticGTV", channel_names={"0": "CT"}, labels=dict(LABELS),
        description="Synthetic chest CT phantoms (engine.synth): small low-contrast lung tumours (GTV).")


def _lobulated(rng: np.random.Generator, centre: np.ndarray, radius: float) -> list[Ellipsoid]:
    """A nodule as a few overlapping ellipsoids (lobulated outline)."""
    parts = [Ellipsoid(tuple(centre), tuple(radius * rng.uniform(0.8, 1.1, 3)))]  # type: ignore[arg-type]
    for _ in range(int(rng.integers(0, 3))):
        offset = rng.uniform(-0.5, 0.5, 3) * radius
        parts.append(Ellipsoid(tuple(centre + offset), tuple(radius * rng.uniform(0.45, 0.75, 3))))  # type: ignore[arg-type]
    return parts


def _nodule_centres(rng: np.random.Generator, grid: Grid, lung: np.ndarray, n: int) -> list[tuple[np.ndarray, str]]:
    """Centres in lung voxels: some inside the parenchyma, some on its boundary (juxtapleural)."""
    boundary = lung & ~ndimage.binary_erosion(lung, iterations=1)
    inside = np.flatnonzero(lung & ~boundary)
    edge = np.flatnonzero(boundary)
    out = []
    for _ in range(n):
        kind = "juxtapleural" if (rng.random() < 0.4 and edge.size) or not inside.size else "intrapulmonary"
        pool = edge if kind == "juxtapleural" else inside
        idx = np.array(np.unravel_index(int(pool[rng.integers(pool.size)]), grid.shape), dtype=float)
        out.append((grid.to_body(idx), kind))
    return out


def generate(seed: int, preset: str = "small") -> PhantomCase:
    """One chest CT with small lung tumours."""
    rng = np.random.default_rng(seed)
    p = PRESETS[preset]
    u = rng.uniform
    sp = max(p.spacing[1], p.spacing[2])
    th = sample_thorax(rng, min_layer_mm=2.0 * sp, n_nodes=int(rng.integers(0, 3)), n_vessels=int(rng.integers(14, 22)))
    grid = make_grid(rng, p, (u(-15, 15), th.body.cy.base + u(-5, 5), u(-5, 5)), 4.0)
    canvas = Canvas(grid, TISSUES)
    paint_thorax(canvas, th)

    n = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    budget = MAX_TUMOUR_FRACTION * float(np.prod(grid.shape)) * grid.voxel_volume
    radii = rng.uniform(max(4.0, 1.2 * sp), 15.0, n)
    volume = float(np.sum(4.0 / 3.0 * np.pi * radii ** 3)) * 1.6  # lobules add up to ~60 %
    if volume > budget:
        radii *= (budget / volume) ** (1 / 3)
    ggo = bool(rng.random() < 0.3)  # part-solid / ground-glass case: between lung and soft tissue
    lung = canvas.where("lung")
    nodules = []
    for (centre, kind), r in zip(_nodule_centres(rng, grid, lung, n), radii):
        mask = np.zeros(grid.shape, dtype=bool)
        for part in _lobulated(rng, centre, float(r)):
            mask |= grid.mask(part)
        # a juxtapleural nodule abuts the chest wall or mediastinum but does not replace it
        painted = canvas.paint("tumour", mask, only_over=("lung", "lung_vessel", "tumour"))
        nodules.append({"centre_mm": centre.tolist(), "radius_mm": float(r), "kind": kind,
                        "solid": not ggo, "voxels": int(painted.sum())})
    tumour = canvas.where("tumour")
    if not tumour.any():  # the lung was too small for every draw: place a minimal nodule at the lung centre
        centre = grid.to_body(np.argwhere(lung).mean(axis=0))
        tumour = canvas.paint("tumour", grid.mask(Ellipsoid(tuple(centre), (6.0, 6.0, 6.0))), only_over=("lung",))

    mean, amp = ct_values(rng)
    mean["tumour"] = u(-450.0, -150.0) if ggo else u(10.0, 50.0) + (mean["muscle"] - 47.0)
    amp["tumour"] = 60.0 if ggo else 10.0
    clean = canvas.render(mean, amp, texture_field(rng, grid, 3.0))
    noise_sd = u(12.0, 25.0) if sp < 1.5 else u(5.0, 10.0)
    volume_hu = finish_ct(rng, grid, clean, noise_sd)
    label = tumour.astype(np.uint8)
    image, label_img = make_images(rng, grid, volume_hu, label, "CT", u(-500.0, -300.0))
    slices = np.flatnonzero(tumour.any(axis=(1, 2)))
    meta = {"task": TASK, "preset": preset, "seed": int(seed), "nodules": nodules,
            "tumour_voxels": int(tumour.sum()), "tumour_fraction": float(tumour.mean()),
            "tumour_slices": slices.tolist(), "noise_sd_hu": float(noise_sd), "masks": {"tumour": tumour}}
    return PhantomCase(image, label_img, CaseTargets(), meta)
