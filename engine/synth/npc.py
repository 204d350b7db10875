"""Nasopharyngeal carcinoma phantom: contrast-enhanced T1 MRI (arbitrary units ≥ 0), GTV label, T-stage.

Anatomy (body frame centred near the nasopharynx; z superior, y posterior, x left): the
nasopharyngeal air cavity lined by enhancing mucosa, the parapharyngeal spaces (fat, bright on
T1) laterally behind a thin muscle layer, the skull base as a sloping bone plate (dark, marrow
texture) above, the intracranial compartment (brain) over it, the internal carotids, nasal
cavity and maxillary sinuses in front, prevertebral muscles and the upper cervical spine behind.

The stage is drawn (T1–T4 ≈ 8/44/27/21 %, the paper's cohort), the tumour is grown from the
lateral/posterolateral wall toward the matching compartment, and the stage is re-derived from
the voxel masks: T4 if any tumour voxel is intracranial, T3 if any lies in skull-base bone,
T2 if any lies outside the nasopharynx (parapharyngeal space or surrounding soft tissue),
else T1 (confined to the nasopharynx: cavity + mucosa).

Slices are thick (6 mm) like the paper's data; the skull base is at least two slices thick so
bone invasion stays visible.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.data.dataset import CaseTargets, DatasetDescription
from engine.synth.common import (STAGES, PhantomCase, Preset, make_grid, make_images, sample_stage,
                                 texture_field)
from engine.synth.shapes import Canvas, Ellipsoid, Segment, Slab, Tube, Wiggle, blur, smooth_noise
from engine.tasks.npc import TASK as _DECLARATION

log = logging.getLogger(__name__)

TASK = _DECLARATION.name
HAS_TARGETS = True
PRESETS = {
    "small": Preset((16, 64, 64), (6.0, 1.64, 1.64)),
    "realistic": Preset((21, 224, 224), (6.0, 0.4688, 0.4688)),
}
LABELS = _DECLARATION.label_map
#: T1..T4 mix of the paper's cohort (8.1 / 43.8 / 27.2 / 20.9 %).
STAGE_PROBABILITIES = (0.08, 0.44, 0.27, 0.21)
TISSUES = ("muscle", "brain", "bone", "sinus_air", "nasal_mucosa", "pps_fat", "vessel", "mucosa", "np_air",
           "tumour")
NASOPHARYNX = ("mucosa", "np_air")


def description() -> DatasetDescription:
    return DatasetDescription(
        name="SyntheticNPC", channel_names={"0": "T1C"}, labels=dict(LABELS), stages=list(STAGES),
        description="Synthetic contrast-enhanced T1 MRI phantoms (engine.synth): nasopharyngeal carcinoma "
                    "with T-stage by extension.")


def draw_stage(seed: int) -> str:
    """The stage a case with this seed is built for (the first draw of its generator)."""
    return sample_stage(np.random.default_rng(seed), STAGE_PROBABILITIES)


def stage_from_masks(tumour: np.ndarray, nasopharynx: np.ndarray, bone: np.ndarray,
                     intracranial: np.ndarray) -> str:
    """The T-stage rule on voxel masks taken before the tumour was painted."""
    if np.any(tumour & intracranial):
        return "T4"
    if np.any(tumour & bone):
        return "T3"
    if np.any(tumour & ~nasopharynx):
        return "T2"
    return "T1"


def _anatomy(rng: np.random.Generator, sp: float, sz: float) -> dict:
    """Sample the regional anatomy (all analytic shapes, mm)."""
    u = rng.uniform
    t_mucosa = max(u(3.0, 5.0), 2.0 * sp)
    cavity = Ellipsoid((u(-14.0, -6.0), u(-6.0, 0.0), u(-2.0, 2.0)), (u(10.0, 14.0), u(6.0, 9.0), u(10.0, 14.0)))
    compartment = cavity.grown(t_mucosa)
    cz, cy, cx = compartment.centre
    roof = cz + compartment.radii[0]
    slope, half = -u(0.3, 0.6), max(u(6.0, 10.0), sz)
    skull_base = Slab(roof + u(0.0, 2.0) + half - slope * cy, half, slope, u(0.002, 0.006))
    t_muscle = max(u(3.0, 6.0), 2.0 * sp)
    pps = []
    for side in (-1.0, 1.0):
        r = (u(12.0, 18.0), u(8.0, 12.0), max(u(5.0, 8.0), 2.5 * sp))
        x = cx + side * (compartment.radii[2] + t_muscle + r[2])
        pps.append(Ellipsoid((cz + u(-4.0, 4.0), cy + u(-2.0, 6.0), x), r))
    carotids = [Tube(-1000.0, 1000.0, Wiggle(cy + u(12.0, 18.0)), Wiggle(p.centre[2] + np.sign(p.centre[2]) * u(6.0, 10.0)),
                     Wiggle(u(2.5, 3.5)), Wiggle(u(2.5, 3.5))) for p in pps]
    spine = Tube(-1000.0, 1000.0, Wiggle(cy + compartment.radii[1] + u(10.0, 16.0) + 8.0), Wiggle(cx),
                 Wiggle(u(7.0, 9.0)), Wiggle(u(9.0, 12.0)))
    nasal = Ellipsoid((cz + u(-2.0, 4.0), cy - compartment.radii[1] - u(14.0, 20.0), cx), (14.0, 20.0, u(9.0, 13.0)))
    sinuses = [Ellipsoid((cz + u(0.0, 8.0), cy - u(35.0, 45.0), side * u(26.0, 34.0)), (u(14.0, 18.0),) * 3)
               for side in (-1.0, 1.0)]
    return dict(cavity=cavity, compartment=compartment, skull_base=skull_base, pps=pps, carotids=carotids,
                spine=spine, nasal=nasal, sinuses=sinuses, t_mucosa=t_mucosa)


def _tumour_shapes(rng: np.random.Generator, a: dict, stage: str, sz: float) -> tuple[list, str, int]:
    """Shapes whose union is the tumour, the side it grows on, and how it must be clipped."""
    u = rng.uniform
    comp: Ellipsoid = a["compartment"]
    side = float(rng.choice([-1.0, 1.0]))
    theta = np.radians(u(0.0, 50.0))  # 0 = lateral wall, 50° = posterolateral (fossa of Rosenmüller)
    wall = 1.0 - 0.5 * a["t_mucosa"] / min(comp.radii[1:])
    centre = np.array([comp.centre[0] + u(-0.3, 0.5) * comp.radii[0] * 0.6,
                       comp.centre[1] + np.sin(theta) * comp.radii[1] * wall,
                       comp.centre[2] + side * np.cos(theta) * comp.radii[2] * wall])
    shapes: list = [Ellipsoid(tuple(centre), (u(6.0, 12.0), u(5.0, 9.0), u(5.0, 9.0)))]
    pps: Ellipsoid = a["pps"][0 if side < 0 else 1]
    if stage == "T2" or (stage in ("T3", "T4") and rng.random() < 0.6):
        end = np.asarray(pps.centre) + np.asarray(pps.radii) * rng.uniform(-0.3, 0.3, 3)
        shapes.append(Segment(tuple(centre), tuple(end), u(4.0, 7.0)))
        shapes.append(Ellipsoid(tuple(end), tuple(np.asarray(pps.radii) * u(0.4, 0.7))))
    slab: Slab = a["skull_base"]
    if stage in ("T3", "T4"):
        top = centre.copy()
        top[2] -= side * u(0.0, 6.0)
        mid = float(slab.mid(top[1], top[2]))
        top[0] = mid + (u(0.0, 0.3) * slab.half_thickness if stage == "T3" else slab.half_thickness + u(6.0, 15.0))
        shapes.append(Segment(tuple(centre), tuple(top), u(5.0, 8.0)))
        if stage == "T4":
            shapes.append(Ellipsoid(tuple(top), (max(u(5.0, 10.0), sz), u(6.0, 12.0), u(6.0, 12.0))))
    return shapes, "left" if side > 0 else "right", {"T1": 1, "T2": 2, "T3": 3}.get(stage, 4)


def generate(seed: int, preset: str = "small") -> PhantomCase:
    """One NPC MRI phantom (see the module docstring for the stage rule)."""
    rng = np.random.default_rng(seed)
    sampled = sample_stage(rng, STAGE_PROBABILITIES)
    p = PRESETS[preset]
    grid = make_grid(rng, p, (rng.uniform(-6, 6) + 5.0, rng.uniform(-4, 4), rng.uniform(-3, 3)), 5.0)
    sp, sz = grid.inplane_spacing, grid.spacing[0]
    a = _anatomy(rng, sp, sz)

    canvas = Canvas(grid, TISSUES)
    z, y, x = grid.axes()
    slab: Slab = a["skull_base"]
    intracranial = np.broadcast_to(slab.above(z, y, x), grid.shape)
    canvas.paint("brain", intracranial)
    canvas.paint("bone", grid.mask(slab))
    canvas.paint("bone", grid.mask(a["spine"]), not_over=("brain",))
    for s in a["sinuses"]:
        canvas.paint("nasal_mucosa", grid.mask(s.grown(2.0)), not_over=("brain", "bone"))
        canvas.paint("sinus_air", grid.mask(s), not_over=("brain", "bone"))
    canvas.paint("nasal_mucosa", grid.mask(a["nasal"].grown(3.0)), not_over=("brain", "bone"))
    canvas.paint("sinus_air", grid.mask(a["nasal"]), not_over=("brain", "bone"))
    for pps in a["pps"]:
        canvas.paint("pps_fat", grid.mask(pps), not_over=("brain", "bone"))
    canvas.paint("mucosa", grid.mask(a["compartment"]), not_over=("brain",))
    canvas.paint("np_air", grid.mask(a["cavity"]), not_over=("brain",))
    for vessel in a["carotids"]:
        canvas.paint("vessel", grid.mask(vessel))
    masks = {"nasopharynx": canvas.where(*NASOPHARYNX), "pps": canvas.where("pps_fat"),
             "bone": canvas.where("bone"), "intracranial": canvas.where("brain")}

    shapes, side, clip = _tumour_shapes(rng, a, sampled, sz)
    blob = np.zeros(grid.shape, dtype=bool)
    for s in shapes:
        blob |= grid.mask(s)
    allowed = {1: masks["nasopharynx"], 2: ~(masks["bone"] | masks["intracranial"]),
               3: ~masks["intracranial"]}.get(clip)
    if allowed is not None:
        blob &= allowed
    tumour = canvas.paint("tumour", blob, not_over=("vessel",))

    u = rng.uniform
    mucosa = u(480.0, 560.0)
    mean = {"muscle": u(260, 320), "brain": u(330, 400), "bone": u(110, 200), "sinus_air": u(5, 15),
            "nasal_mucosa": mucosa * u(0.9, 1.05), "pps_fat": u(700, 850), "vessel": u(30, 60), "mucosa": mucosa,
            "np_air": u(5, 15), "tumour": mucosa * u(0.8, 0.98)}
    amp = {"muscle": 20.0, "brain": 15.0, "bone": 70.0, "nasal_mucosa": 35.0, "pps_fat": 40.0, "mucosa": 35.0,
           "tumour": 45.0}
    clean = canvas.render(mean, amp, texture_field(rng, grid, 3.0))
    clean = blur(clean, (2.0, 0.5, 0.5), grid.spacing, min_sigma_vox=0.4)
    bias = 1.0 + u(0.05, 0.2) * smooth_noise(rng, grid.shape, [60.0 / s for s in grid.spacing])
    clean *= np.float32(u(0.6, 1.6)) * bias
    sigma = np.float32(u(0.02, 0.05) * float(np.median(clean)))
    n1, n2 = (rng.standard_normal(grid.shape, dtype=np.float32) * sigma for _ in range(2))
    volume = np.sqrt((clean + n1) ** 2 + n2 ** 2)  # Rician magnitude noise: MR values are never negative
    label = (canvas.map == canvas.ids["tumour"]).astype(np.uint8)
    image, label_img = make_images(rng, grid, volume, label, "MR", u(-80.0, -40.0))

    masks["tumour"] = label.astype(bool)
    stage = stage_from_masks(masks["tumour"], masks["nasopharynx"], masks["bone"], masks["intracranial"])
    if stage != sampled:
        log.debug("seed %d: built for %s, geometry says %s", seed, sampled, stage)
    centre = np.argwhere(masks["tumour"]).mean(axis=0) if tumour.any() else np.full(3, np.nan)
    meta = {
        "task": TASK, "preset": preset, "seed": int(seed), "stage_sampled": sampled, "stage": stage,
        "side": side, "tumour_voxels": int(masks["tumour"].sum()),
        "tumour_fraction": float(masks["tumour"].mean()),
        "tumour_centre_index_zyx": centre.tolist(),
        "extends_to_pps": bool(np.any(masks["tumour"] & masks["pps"])),
        "masks": masks,
    }
    return PhantomCase(image, label_img, CaseTargets(t_stage=stage), meta)
