"""Esophageal cancer phantom: thoracic CT (HU) with organ labels and an invasion-defined T-stage.

Labels: 0 background, 1 EC, 2 aorta, 3 esophagus (lumen + wall, minus tumour), 4 lymph node,
5 pericardium (the pericardial sac with its contents).

The stage is drawn first (≈ 17/19/54/10 % for T1–T4, the EC169 mix), the tumour is then
built to invade to the matching depth, and the stage is finally **re-derived from the voxel
masks** with the clinical rule, so label and geometry can never disagree:

- T1: tumour within the inner wall layers (mucosa/submucosa; protrusion into the lumen allowed);
- T2: into the muscularis propria, not beyond the outer wall;
- T3: through the wall into periesophageal fat;
- T4: touching (6-neighbourhood) the aorta or the pericardium.

The tumour is a dome on the inner wall in cylindrical coordinates around the esophageal centre
line (extent along z, angular half-width, radial reach). How far it may reach without touching
a neighbour is planned by casting rays through the analytic anatomy before voxelising. Its HU
overlaps the wall, muscles, nodes and vessels, so intensity alone does not find it.

The CT is a portal-venous contrast phase (version 3; the paper's cohort had enhanced CT): blood
pools are bright, and the tumour enhances 10–25 HU more than the muscularis — one to two noise SDs,
low-contrast, seen as a region rather than voxel by voxel. Versions 1–2 had an iso-dense tumour
whose edge inside the wall was invisible, so its extent could not be learnt from the image.

A T1/T2 tumour thickens the wall over its footprint (:class:`~engine.synth.thorax.WallThickening`:
the outer wall moves out by 2.5–5 mm for T1, 3.5–7 mm for T2, at most half the fat gap to the
nearest organ), because on CT focal wall thickening is the main sign of an intramural tumour.
The thickening is the tumour's own mass (version 4): the band from the lumen to the tumour's depth
stretches, and the wall layers beyond it are pushed out with their thickness kept. (In versions 2–3
the whole wall stretched, so the wall layers outside a thin tumour — a thickened muscularis, labelled
wall — took more than half of the bulge: a mass effect no tumour has.) Depths and the stage rule
are measured in undeformed radii, so the thickening never changes a stage.

In the ``small`` preset every wall layer is ≥ 2 voxels thick, which exaggerates the wall
(≈ 4 mm per layer instead of ≈ 2 mm): deliberately, so invasion depth stays visible.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from engine.data.dataset import CaseTargets, DatasetDescription
from engine.synth.common import (STAGES, PhantomCase, Preset, SynthError, finish_ct, make_grid, make_images,
                                 sample_stage, texture_field)
from engine.synth.shapes import Canvas, Grid, ray_hits, smooth_noise, touches
from engine.synth.thorax import (ESOPHAGUS, PERICARDIAL_SAC, SOLID_NEIGHBOURS, TISSUES, Thorax, WallThickening,
                                 ct_values, paint_thorax, sample_thorax)
from engine.tasks.esophagus import TASK as _DECLARATION

log = logging.getLogger(__name__)

TASK = _DECLARATION.name
HAS_TARGETS = True
PRESETS = {
    "small": Preset((64, 96, 96), (3.0, 1.95, 1.95)),
    "realistic": Preset((237, 256, 256), (1.0, 0.73, 0.73)),
}
LABELS = _DECLARATION.label_map
#: Stage mix of the EC169 cohort (T1, T2, T3, T4).
STAGE_PROBABILITIES = (0.17, 0.19, 0.54, 0.10)
#: Range of the focal wall thickening (mm) an intramural tumour causes, before the free-space cap.
THICKENING_MM = {"T1": (2.5, 5.0), "T2": (3.5, 7.0)}
#: Contrast phase of the CT (the paper's cohort had thin-slice contrast-enhanced CT).
PHASE = "venous"
#: How much more the tumour enhances than the muscularis (HU): about one to two noise SDs, so the
#: tumour is low-contrast — visible as a region, not voxel by voxel.
TUMOUR_ENHANCEMENT_HU = (10.0, 25.0)
#: Phantom generations: 1 iso-dense intramural tumours, 2 + focal wall thickening under T1/T2,
#: 3 + contrast-enhanced (venous) phase with an enhancing tumour, 4 the thickening is the tumour's own
#: volume (the wall beyond the tumour's depth keeps its thickness).
PHANTOM_VERSION = 4
_TISSUE_LABELS = {"tumour": 1, "aorta": 2, **{t: 3 for t in ESOPHAGUS}, "node": 4,
                  **{t: 5 for t in PERICARDIAL_SAC}}


def description() -> DatasetDescription:
    return DatasetDescription(
        name="SyntheticEsophagus", channel_names={"0": "CT"}, labels=dict(LABELS), stages=list(STAGES),
        description="Synthetic thoracic CT phantoms (engine.synth): esophageal cancer with T-stage by invasion depth.")


def draw_stage(seed: int) -> str:
    """The stage a case with this seed is built for (the first draw of its generator)."""
    return sample_stage(np.random.default_rng(seed), STAGE_PROBABILITIES)


def stage_from_masks(tumour: np.ndarray, inner_layers: np.ndarray, wall: np.ndarray, aorta: np.ndarray,
                     pericardium: np.ndarray) -> str:
    """The T-stage rule on voxel masks (``inner_layers``/``wall``: inside the inner/outer wall edge)."""
    if touches(tumour, aorta | pericardium):
        return "T4"
    if np.any(tumour & ~wall):
        return "T3"
    if np.any(tumour & ~inner_layers):
        return "T2"
    return "T1"


@dataclass
class TumourPlan:
    """A dome-shaped tumour on the inner wall, in cylindrical coordinates around the centre line."""

    z_centre: float
    half_length: float      # mm along z
    phi: float              # direction of deepest invasion (rad; 0 = left, π/2 = posterior)
    half_width: float       # angular half-width (rad)
    reach: float            # largest distance from the centre line (mm)
    bulge: float            # 0..1: how far it protrudes into the lumen
    target: str | None = None


def _free_radius(th: Thorax, z_centre: float, half_length: float, angles: np.ndarray) -> np.ndarray:
    """Per direction, how far from the centre line the nearest solid neighbour is (at most the fat
    cuff's radius), the smallest over nine heights spanning ``z_centre ± half_length``."""
    zs = np.linspace(z_centre - half_length, z_centre + half_length, 9)
    origins = np.stack([th.centre(z) for z in zs])
    hits = ray_hits(th.obstacles(), origins[:, None, :], angles[None, :], th.r_cuff + 5.0).min(axis=0)
    return np.minimum(hits, th.r_cuff)


def _plan_tumour(rng: np.random.Generator, th: Thorax, grid: Grid, stage: str) -> TumourPlan:
    u = rng.uniform
    sp = grid.inplane_spacing
    zlo, zhi = grid.z_range
    margin = 1.5 * sp
    size = {"T1": (15.0, 30.0, 0.5, 1.0), "T2": (15.0, 30.0, 0.5, 1.0)}.get(stage, (14.0, 35.0, 0.4, 1.0))
    half_length = u(size[0], size[1])
    half_width = np.pi * u(size[2], size[3])
    z_lo, z_hi = zlo + half_length + 10.0, zhi - half_length - 10.0
    plan = TumourPlan(u(z_lo, z_hi), half_length, u(-np.pi, np.pi), half_width, th.r_inner, u(0.3, 1.0))
    if stage == "T1":
        plan.reach = min(th.r_lumen + u(0.5, 0.9) * (th.r_inner - th.r_lumen), th.r_inner - 0.3 * sp)
        return plan
    if stage == "T2":
        plan.reach = th.r_inner + u(0.35, 0.75) * (th.r_outer - th.r_inner)
        return plan
    if stage == "T4":
        target = "pericardium" if rng.random() < 0.4 else "aorta"
        for name in (target, "aorta"):
            shape = th.sac if name == "pericardium" else th.aorta
            if name == "pericardium":
                zs = (max(z_lo, th.sac.centre[0] - 0.5 * th.sac.radii[0]),
                      min(z_hi, th.sac.centre[0] + 0.5 * th.sac.radii[0]))
                if zs[1] <= zs[0]:
                    continue
                plan.z_centre = u(*zs)
            angles = np.linspace(-np.pi, np.pi, 145)[:-1]
            hits = ray_hits([shape], th.centre(plan.z_centre)[None], angles, th.r_cuff + 20.0)
            if np.isfinite(hits).any():
                best = int(np.argmin(hits))
                plan.phi, plan.reach, plan.target = float(angles[best]), float(hits[best] + margin), name
                plan.half_width = np.pi * u(0.3, 0.7)
                return plan
        stage = "T3"  # nothing reachable: fall back to a tumour through the wall
    # T3: through the wall, but stop short of every neighbour (planned with rays)
    for _ in range(25):
        angles = plan.phi + np.linspace(-plan.half_width, plan.half_width, 25)
        free = _free_radius(th, plan.z_centre, plan.half_length + grid.spacing[0], angles) - margin
        h = np.sqrt(np.clip(1.0 - ((angles - plan.phi) / plan.half_width) ** 2, 1e-6, 1.0))
        reach_max = float(np.min(th.r_lumen + (free - th.r_lumen) / np.sqrt(h)))
        if reach_max >= th.r_outer + 1.5 * sp:
            plan.reach = min(th.r_outer + u(1.5 * sp, max(12.0, 2.0 * sp)), reach_max)
            return plan
        plan.phi = u(-np.pi, np.pi)
        plan.half_width = np.pi * u(0.3, 0.8)
        plan.z_centre = u(z_lo, z_hi)
    log.debug("no free direction for a T3 tumour; building it anyway (stage is re-derived)")
    plan.reach = th.r_outer + 1.5 * sp
    return plan


def _plan_thickening(rng: np.random.Generator, th: Thorax, grid: Grid, stage: str,
                     plan: TumourPlan) -> WallThickening | None:
    """The wall thickening under an intramural (T1/T2) tumour, kept clear of every neighbour.

    The footprint is the tumour's, a quarter wider so the wall tapers back to normal beyond it.
    Towards each direction the outer wall may move at most half of the free fat between it and
    the nearest solid organ (rays through the footprint's heights, the narrowest gap within
    ±10°), so a thickened wall never reaches the aorta or the pericardium. Only the band up to the
    tumour's depth stretches: the added volume is the tumour's.
    """
    if stage not in THICKENING_MM:
        return None
    half_length, half_width = 1.25 * plan.half_length, min(1.25 * plan.half_width, np.pi)
    angles = WallThickening.directions(72)
    free = _free_radius(th, plan.z_centre, half_length, angles) - th.r_outer - 1.5 * grid.inplane_spacing
    narrowest = np.min([np.roll(free, k) for k in range(-2, 3)], axis=0)
    cap = 0.5 * np.clip(narrowest, 0.0, None)
    return WallThickening(plan.z_centre, half_length, plan.phi, half_width, rng.uniform(*THICKENING_MM[stage]),
                          tuple(float(c) for c in cap), stretch_to_mm=plan.reach)


def _tumour_mask(rng: np.random.Generator, grid: Grid, th: Thorax, plan: TumourPlan,
                 thickening: WallThickening | None = None) -> np.ndarray:
    """Voxelise the dome: a patch on the wall × a radial range; the irregular outline never adds depth.

    Radii are undeformed ones (see :class:`WallThickening`), so a tumour under a thickened wall
    stretches with it and keeps the depth its stage was planned for.
    """
    tube = th.esophagus
    stretch = 0.0 if thickening is None else thickening.depth_mm
    lo, hi = tube.bounds((plan.reach + stretch) / th.r_outer + 0.2,
                         (plan.z_centre - plan.half_length, plan.z_centre + plan.half_length))

    def dome(z, y, x):
        rho, phi = tube.radial_mm(z, y, x)
        if thickening is not None:
            rho = thickening.undeformed_radius(th, z, rho, phi)
        dphi = np.angle(np.exp(1j * (phi - plan.phi))) / plan.half_width
        q2 = ((z - plan.z_centre) / plan.half_length) ** 2 + dphi ** 2
        # irregular outline: the footprint wobbles, the depth at its centre does not
        q2 = q2 * (1.0 + 0.35 * np.clip(smooth_noise(rng, rho.shape, 2.5), -1.5, 1.5))
        h = np.sqrt(np.clip(1.0 - q2, 0.0, 1.0))
        outer = th.r_lumen + (plan.reach - th.r_lumen) * np.sqrt(h)
        inner = th.r_lumen * (1.0 - plan.bulge * h)
        return (q2 < 1.0) & (rho <= outer) & (rho >= inner)

    return grid.evaluate(dome, (lo, hi), fill=False, dtype=bool)


def generate(seed: int, preset: str = "small", enhancement_scale: float = 1.0) -> PhantomCase:
    """One esophageal cancer CT phantom (see the module docstring for the rule it obeys).

    ``enhancement_scale`` multiplies the tumour's drawn enhancement over the muscularis and changes
    nothing else (same geometry, texture and noise for the same seed): 0 makes the tumour iso-dense,
    2 doubles its contrast. It is a probe of whether a model delineates the tumour by its enhancement
    (``benchmarks/enhancement_response.py``); datasets for training keep the default 1.
    """
    if not np.isfinite(enhancement_scale) or enhancement_scale < 0:
        raise SynthError(f"enhancement_scale must be a finite number ≥ 0 (0: iso-dense tumour, 1: as drawn), "
                         f"got {enhancement_scale!r}.")
    rng = np.random.default_rng(seed)
    sampled = sample_stage(rng, STAGE_PROBABILITIES)
    p = PRESETS[preset]
    grid = make_grid(rng, p, (rng.uniform(-10, 10), rng.uniform(12, 22), rng.uniform(-5, 5)), 4.0)
    sp = grid.inplane_spacing
    th = sample_thorax(rng, min_layer_mm=2.0 * sp, n_nodes=int(rng.integers(2, 5)), n_vessels=6)
    canvas = Canvas(grid, TISSUES)
    plan = _plan_tumour(rng, th, grid, sampled)
    thickening = _plan_thickening(rng, th, grid, sampled, plan)
    rho = paint_thorax(canvas, th, thickening)

    tumour = canvas.paint("tumour", _tumour_mask(rng, grid, th, plan, thickening), not_over=SOLID_NEIGHBOURS)
    for _ in range(5):  # a degenerate draw (e.g. clipped away): grow it until visible
        if tumour.sum() >= 8:
            break
        plan.half_length *= 1.5
        plan.half_width = min(plan.half_width * 1.5, np.pi)
        tumour = canvas.paint("tumour", _tumour_mask(rng, grid, th, plan, thickening), not_over=SOLID_NEIGHBOURS)

    mean, amp = ct_values(rng, PHASE)
    enhancement = rng.uniform(*TUMOUR_ENHANCEMENT_HU) * enhancement_scale
    mean["tumour"] = mean["esophagus_muscle"] + enhancement
    amp["tumour"] = rng.uniform(5.0, 10.0)
    clean = canvas.render(mean, amp, texture_field(rng, grid, 3.0))
    noise_sd = rng.uniform(10.0, 22.0) if sp < 1.0 else rng.uniform(6.0, 12.0)
    volume = finish_ct(rng, grid, clean, noise_sd)
    label = canvas.labels(_TISSUE_LABELS)
    image, label_img = make_images(rng, grid, volume, label, "CT", rng.uniform(-400.0, -200.0))

    tumour = label == 1
    masks = {"tumour": tumour, "inner_layers": rho < th.r_inner, "wall": rho < th.r_outer,
             "muscularis": (rho >= th.r_inner) & (rho < th.r_outer), "aorta": label == 2,
             "pericardium": label == 5}
    stage = stage_from_masks(tumour, masks["inner_layers"], masks["wall"], masks["aorta"], masks["pericardium"])
    if stage != sampled:
        log.debug("seed %d: built for %s, geometry says %s", seed, sampled, stage)
    centre_idx = np.argwhere(tumour).mean(axis=0)
    meta = {
        "task": TASK, "preset": preset, "seed": int(seed), "stage_sampled": sampled, "stage": stage,
        "t4_target": plan.target if stage == "T4" else None,
        "tumour_plan": {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in asdict(plan).items()},
        "tumour_voxels": int(tumour.sum()), "tumour_fraction": float(tumour.mean()),
        "tumour_centre_index_zyx": centre_idx.tolist(),
        "tumour_centre_xyz_mm": image.index_to_physical(centre_idx).tolist(),
        "invasion_depth_mm": float(rho[tumour].max() - th.r_outer),
        # how far the outer wall moved at the tumour's centre (after the cap towards neighbours)
        "wall_thickening_mm": 0.0 if thickening is None else float(
            thickening.displacement(np.array(plan.z_centre), np.array(plan.phi))),
        "wall_mm": {"lumen": th.r_lumen, "inner": th.r_inner - th.r_lumen, "muscularis": th.r_outer - th.r_inner},
        "noise_sd_hu": float(noise_sd), "phase": PHASE, "phantom_version": PHANTOM_VERSION,
        "tumour_enhancement_hu": float(enhancement),
        "masks": masks,
    }
    return PhantomCase(image, label_img, CaseTargets(t_stage=stage), meta)
