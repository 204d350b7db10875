"""FDG PET phantom (SUV): one thoracic tumour, its label, a pathology and a binary outcome.

The anatomy is the shared thorax (:mod:`engine.synth.thorax`) rendered as FDG uptake: low
background in fat, muscle and lung, blood pool in the aorta and cardiac cavities, a liver
dome, vertebral marrow, mild physiological uptake of the esophageal wall, a myocardium whose
uptake varies a lot between patients (fasting state), and sometimes reactive (hot) lymph
nodes, so that the tumour is not simply "the brightest thing in the scan". The scanner is
modelled by a Gaussian point-spread function (FWHM 6–8 mm) and signal-dependent
(Poisson-like) noise with a short correlation length, as in reconstructed PET.

Pathology (the classes of the multi-task PET outcome paper, ``esophageal`` vs ``lung`` cancer) decides where the
tumour grows: an esophageal tumour is elongated along the esophagus (it fills the lumen and
infiltrates the wall and periesophageal fat); a lung tumour is roundish and sits in the lung
parenchyma (70 %), at the hilum (18 %) or centrally against the esophagus (12 %), where it can
look like an esophageal one. Esophageal tumours are also a little hotter on average. Location therefore
predicts the pathology well but not perfectly.

**Outcome rule.** Each tumour gets a latent uptake pattern: intratumoural heterogeneity ``h``
(texture amplitude and a photopenic necrotic core), the intensity and the extent of a
**peritumoral uptake halo** (inflammation/infiltration around the tumour, *not* part of the
label) and the metabolic tumour volume. The outcome (1 = poor: non-response or progression,
0 = good) is drawn from a logistic model on these standardised features::

    risk = -0.2 + 1.0·z(h) + 1.2·z(halo intensity) + 0.8·z(halo extent) + 0.6·z(log MTV)
    outcome ~ Bernoulli(sigmoid(risk))

The Bernoulli draw is the label noise: the true ``risk`` ranks outcomes with an ROC AUC of
about 0.85, so the target is learnable from the uptake pattern but never deterministic.
``meta`` records the latent features, ``risk``, the probability and image-measured features
(SUVmax, SUVmean, MTV, heterogeneity, peritumoral SUV).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from engine.data.dataset import CaseTargets, DatasetDescription
from engine.synth.common import PhantomCase, Preset, make_grid, make_images, texture_field
from engine.synth.shapes import Canvas, Ellipsoid, Grid, blur, crop_box, smooth_noise
from engine.synth.thorax import (ESOPHAGUS, PERICARDIAL_SAC, SOLID_NEIGHBOURS, TISSUES, Thorax, paint_thorax,
                                 sample_thorax)
from engine.tasks.pet import TASK as _DECLARATION

log = logging.getLogger(__name__)

TASK = _DECLARATION.name
HAS_TARGETS = True
PRESETS = {
    "small": Preset((32, 56, 72), (4.0, 4.0, 4.0)),
    "realistic": Preset((96, 128, 160), (2.0, 2.0, 2.0)),
}
LABELS = _DECLARATION.label_map
PATHOLOGIES = ("esophageal", "lung")
#: Probability of each pathology (the PET outcome paper's cohort: 97 esophageal, 98 lung).
PATHOLOGY_PROBABILITIES = (0.5, 0.5)
OUTCOMES = {0: "good (response / no progression)", 1: "poor (non-response or progression)"}
#: Logistic outcome model on standardised latent features (see the module docstring).
RISK_INTERCEPT = -0.2
RISK_WEIGHTS = {"heterogeneity": 1.0, "halo_intensity": 1.2, "halo_extent_mm": 0.8, "log_mtv_ml": 0.6}
#: Population mean and standard deviation of each latent feature (its sampling distribution).
_FEATURE_MOMENTS = {
    "heterogeneity": (0.5, 1.0 / math.sqrt(12.0)),               # U(0, 1)
    "halo_intensity": (0.25, 0.5 / math.sqrt(12.0)),             # U(0, 0.5)
    "halo_extent_mm": (12.0, 16.0 / math.sqrt(12.0)),            # U(4, 20)
    "log_mtv_ml": (2.7, 0.8),                                    # log of the labelled tumour volume
}
#: Tissues an esophageal tumour may replace (it grows from the wall outwards).
_ESO_GROWS_OVER = ("esophagus_muscle", "esophagus_inner", "esophagus_lumen", "mediastinal_fat", "node", "tumour",
                   "lung", "lung_vessel")
#: Tissues a lung tumour may replace (parenchyma and, at the hilum, mediastinal fat and nodes).
_LUNG_GROWS_OVER = ("lung", "lung_vessel", "mediastinal_fat", "node", "tumour")
#: Tissues without metabolism where no peritumoral halo is drawn.
_NO_HALO = ("air", "trachea_air", "bone_cortex", "tumour")


def description() -> DatasetDescription:
    return DatasetDescription(
        name="SyntheticPET", channel_names={"0": "PT"}, labels=dict(LABELS),
        description="Synthetic FDG PET phantoms in SUV (engine.synth): one thoracic tumour with pathology "
                    "(esophageal/lung) and a binary outcome driven by the tumour and peritumoral uptake pattern.",
        extra={"pathologies": list(PATHOLOGIES), "outcomes": {str(k): v for k, v in OUTCOMES.items()},
               "units": "SUV (body weight)"})


@dataclass
class UptakePattern:
    """The latent tumour uptake pattern of one case; the outcome depends on it."""

    pathology: str
    suv_base: float          # uptake level of the viable tumour before PSF and noise
    heterogeneity: float     # 0..1: texture amplitude and necrotic core
    halo_intensity: float    # peritumoral uptake at the tumour surface, as a fraction of suv_base
    halo_extent_mm: float    # decay length of the halo
    log_mtv_ml: float = 0.0  # log of the tumour (label) volume in ml, set once the tumour is drawn

    def standardised(self) -> dict[str, float]:
        return {k: (float(getattr(self, k)) - m) / s for k, (m, s) in _FEATURE_MOMENTS.items()}


def sample_uptake(rng: np.random.Generator, pathology: str) -> UptakePattern:
    """Draw the latent uptake pattern (independent of the anatomy)."""
    lo, hi = (5.0, 18.0) if pathology == "esophageal" else (4.5, 15.0)
    return UptakePattern(pathology, float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                         float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 0.5)), float(rng.uniform(4.0, 20.0)))


def risk_score(pattern: UptakePattern) -> float:
    """Linear predictor of a poor outcome (log-odds)."""
    z = pattern.standardised()
    return RISK_INTERCEPT + sum(w * z[k] for k, w in RISK_WEIGHTS.items())


def outcome_probability(pattern: UptakePattern) -> float:
    return 1.0 / (1.0 + math.exp(-risk_score(pattern)))


def draw_pathology(seed: int) -> str:
    """The pathology a case with this seed gets (the first draw of its generator)."""
    rng = np.random.default_rng(seed)
    return PATHOLOGIES[int(rng.choice(len(PATHOLOGIES), p=PATHOLOGY_PROBABILITIES))]


# --- tumour geometry ---------------------------------------------------------------------------

def _lobulated(rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray) -> list[Ellipsoid]:
    parts = [Ellipsoid(tuple(centre), tuple(radii))]  # type: ignore[arg-type]
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.uniform(-0.55, 0.55, 3) * radii
        lobe = radii * rng.uniform(0.45, 0.75, 3)
        parts.append(Ellipsoid(tuple(centre + offset), tuple(lobe)))  # type: ignore[arg-type]
    return parts


def _esophageal_parts(rng: np.random.Generator, th: Thorax, z_lo: float, z_hi: float) -> tuple[list, dict]:
    """A tumour elongated along the esophagus: lobes centred near the (curving) centre line."""
    u = rng.uniform
    half_length = u(12.0, 32.0)
    r = u(th.r_outer + 3.0, th.r_outer + 12.0)
    zc = u(z_lo + half_length, max(z_hi - half_length, z_lo + half_length + 1e-3))
    phi = u(-np.pi, np.pi)
    ecc = u(0.0, 0.4) * r   # eccentric growth: one side of the wall is thicker
    parts = []
    for zi in np.linspace(zc - 0.6 * half_length, zc + 0.6 * half_length, 4):
        c = th.centre(float(zi)) + np.array([0.0, ecc * np.sin(phi), ecc * np.cos(phi)])
        radii = (0.5 * half_length, r * u(0.85, 1.1), r * u(0.85, 1.1))
        parts.append(Ellipsoid(tuple(c), radii))  # type: ignore[arg-type]
    volume = 4.0 / 3.0 * np.pi * half_length * r * r
    return parts, {"site": "esophagus", "centre_mm": th.centre(zc).tolist(), "half_length_mm": half_length,
                   "radius_mm": r, "analytic_volume_ml": volume / 1000.0}


def _lung_parts(rng: np.random.Generator, th: Thorax, grid: Grid, lung: np.ndarray, z_lo: float,
                z_hi: float) -> tuple[list, dict]:
    """A roundish lobulated tumour: in the lung parenchyma (70 %), at the hilum (18 %) or central,
    abutting the esophagus from the mediastinum (12 %, where it mimics an esophageal tumour)."""
    u = rng.uniform
    radii = np.array([u(8.0, 22.0)] * 3) * rng.uniform(0.8, 1.15, 3)
    where = rng.random()
    if where < 0.12:
        zc = u(z_lo + radii[0], max(z_hi - radii[0], z_lo + radii[0] + 1e-3))
        phi = u(2.6, 3.7) if rng.random() < 0.6 else u(-0.9, -0.2)   # right (azygo-esophageal) or left-anterior
        d = th.r_outer + 0.8 * 0.5 * (radii[1] + radii[2])
        centre = th.centre(zc) + np.array([0.0, d * np.sin(phi), d * np.cos(phi)])
        site = "mediastinal"
    elif where < 0.30:
        bronchus = th.bronchi[int(rng.integers(len(th.bronchi)))]
        end = np.asarray(bronchus.p1, dtype=float)
        side = np.sign(end[2]) or 1.0
        centre = end + np.array([u(-10.0, 10.0), u(-10.0, 10.0), side * u(0.0, 10.0)])
        centre[0] = np.clip(centre[0], z_lo + radii[0], max(z_hi - radii[0], z_lo + radii[0]))
        site = "hilum"
    else:
        kz = grid.to_index(np.array([[z_lo, 0.0, 0.0], [z_hi, 0.0, 0.0]]))[:, 0]
        depth = ndimage.distance_transform_edt(lung, sampling=grid.spacing)
        ok = lung & (depth >= min(0.6 * radii.min(), float(depth.max())))
        ks = np.arange(grid.shape[0])[:, None, None]
        band = ok & (ks >= kz.min()) & (ks <= kz.max())
        pool = np.flatnonzero(band if band.any() else (ok if ok.any() else lung))
        if pool.size == 0:  # no lung in the field of view: place it beside the esophagus
            centre = th.centre(0.5 * (z_lo + z_hi)) + np.array([0.0, 0.0, 40.0])
        else:
            idx = np.array(np.unravel_index(int(pool[rng.integers(pool.size)]), grid.shape), dtype=float)
            centre = grid.to_body(idx)
        site = "peripheral"
    volume = 4.0 / 3.0 * np.pi * float(np.prod(radii))
    return _lobulated(rng, centre, radii), {"site": site, "centre_mm": np.asarray(centre).tolist(),
                                            "radius_mm": float(radii.mean()),
                                            "analytic_volume_ml": volume / 1000.0}


# --- uptake ------------------------------------------------------------------------------------

def _suv_values(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    """Per-case mean SUV and coefficient of variation (texture) per tissue."""
    u = rng.uniform
    blood = u(1.5, 2.1)
    mean = {
        "air": 0.0, "fat": u(0.25, 0.45), "muscle": u(0.6, 0.95), "liver": u(1.9, 2.6), "lung": u(0.3, 0.55),
        "lung_vessel": blood, "mediastinal_fat": u(0.35, 0.6),
        "node": u(2.0, 3.5) if rng.random() < 0.3 else u(0.8, 1.6),   # reactive nodes in 30 % of the cases
        "bone": u(1.2, 2.0), "bone_cortex": u(0.4, 0.7), "disc": u(0.5, 0.8), "canal": u(0.4, 0.7),
        "aorta": blood, "trachea_wall": u(0.7, 1.1), "trachea_air": 0.05, "pericardium": u(0.9, 1.4),
        "epicardial_fat": u(0.4, 0.7), "heart": float(math.exp(u(math.log(1.5), math.log(9.0)))),
        "heart_blood": blood, "esophagus_muscle": u(1.2, 2.0), "esophagus_inner": u(1.4, 2.6),
        "esophagus_lumen": u(0.6, 1.2), "tumour": 0.0,
    }
    cv = {"fat": 0.15, "muscle": 0.1, "liver": 0.08, "lung": 0.2, "lung_vessel": 0.05, "mediastinal_fat": 0.15,
          "node": 0.1, "bone": 0.15, "aorta": 0.05, "heart": 0.2, "heart_blood": 0.05, "esophagus_muscle": 0.1,
          "esophagus_inner": 0.12, "pericardium": 0.1, "trachea_wall": 0.1}
    return mean, {k: mean[k] * v for k, v in cv.items()}


def _tumour_uptake(rng: np.random.Generator, grid: Grid, tumour: np.ndarray,
                   p: UptakePattern) -> tuple[np.ndarray, tuple]:
    """Uptake inside the tumour box: viable rim brighter than the centre when necrotic, textured."""
    sl = crop_box(tumour, pad=1)
    t = tumour[sl]
    depth = ndimage.distance_transform_edt(t, sampling=grid.spacing)
    q = depth / max(float(depth.max()), 1e-6)
    cv = 0.05 + 0.4 * p.heterogeneity
    necrosis = p.heterogeneity ** 1.5 * rng.uniform(0.6, 0.95) * min(1.0, float(depth.max()) / 8.0)
    core = np.clip((q - 0.35) / 0.4, 0.0, 1.0)
    tex = smooth_noise(rng, t.shape, [5.0 / s for s in grid.spacing])
    uptake = p.suv_base * (0.75 + 0.25 * np.sqrt(q)) * (1.0 + cv * np.clip(tex, -2.5, 2.5))
    uptake *= 1.0 - necrosis * core
    return np.where(t, np.maximum(uptake, 0.3), 0.0).astype(np.float32), sl


def _halo(rng: np.random.Generator, grid: Grid, tumour: np.ndarray, allowed: np.ndarray,
          p: UptakePattern) -> np.ndarray:
    """Peritumoral uptake: exponential decay with the distance from the tumour surface, patchy."""
    out = np.zeros(grid.shape, dtype=np.float32)
    if p.halo_intensity <= 0:
        return out
    pad = int(math.ceil(4.0 * p.halo_extent_mm / min(grid.spacing))) + 1
    sl = crop_box(tumour, pad=pad)
    dist = ndimage.distance_transform_edt(~tumour[sl], sampling=grid.spacing)
    patch = np.clip(1.0 + 0.5 * smooth_noise(rng, dist.shape, [6.0 / s for s in grid.spacing]), 0.2, 2.0)
    halo = p.halo_intensity * p.suv_base * np.exp(-dist / p.halo_extent_mm) * patch
    out[sl] = np.where(allowed[sl] & (dist > 0), halo, 0.0)
    return out


def _measure(volume: np.ndarray, tumour: np.ndarray, body: np.ndarray, exclude: np.ndarray,
             spacing: tuple[float, float, float]) -> dict[str, float]:
    """Image features a radiomics pipeline would compute from the scan and the label."""
    vals = volume[tumour]
    suv_max = float(vals.max())
    sl = crop_box(tumour, pad=int(math.ceil(12.0 / min(spacing))) + 1)
    dist = ndimage.distance_transform_edt(~tumour[sl], sampling=spacing)
    shell = (dist > 0) & (dist <= 10.0) & body[sl] & ~exclude[sl]
    peri = float(volume[sl][shell].mean()) if shell.any() else 0.0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    mtv40 = float(np.count_nonzero(volume[sl][(dist <= 10.0)] >= 0.4 * suv_max)) * voxel_ml
    return {"suv_max": suv_max, "suv_mean": float(vals.mean()), "mtv_ml": float(vals.size) * voxel_ml,
            "mtv40_ml": mtv40, "heterogeneity_cov": float(vals.std() / max(vals.mean(), 1e-6)),
            "peritumoral_suv_mean": peri, "peritumoral_ratio": peri / max(float(vals.mean()), 1e-6),
            "background_suv_median": float(np.median(volume[body & ~tumour & ~exclude]))}


def generate(seed: int, preset: str = "small") -> PhantomCase:
    """One FDG PET phantom (see the module docstring for the outcome rule)."""
    rng = np.random.default_rng(seed)
    pathology = PATHOLOGIES[int(rng.choice(len(PATHOLOGIES), p=PATHOLOGY_PROBABILITIES))]
    pattern = sample_uptake(rng, pathology)
    p = PRESETS[preset]
    u = rng.uniform
    th = sample_thorax(rng, min_layer_mm=2.0, n_nodes=int(rng.integers(2, 6)), n_vessels=int(rng.integers(6, 12)))
    grid = make_grid(rng, p, (u(-45.0, -5.0), th.body.cy.base + u(-5.0, 5.0), u(-5.0, 5.0)), 4.0)
    canvas = Canvas(grid, TISSUES)
    paint_thorax(canvas, th)

    zlo, zhi = grid.z_range
    margin = 2.0 * grid.spacing[0] + 4.0
    z_lo, z_hi = zlo + margin, zhi - margin
    if pathology == "esophageal":
        parts, where = _esophageal_parts(rng, th, z_lo, z_hi)
        grows_over = _ESO_GROWS_OVER
    else:
        parts, where = _lung_parts(rng, th, grid, canvas.where("lung"), z_lo, z_hi)
        grows_over = _LUNG_GROWS_OVER
    blob = np.zeros(grid.shape, dtype=bool)
    for part in parts:
        blob |= grid.mask(part)
    canvas.paint("tumour", blob, only_over=grows_over)
    if np.count_nonzero(canvas.where("tumour")) < 8:  # clipped away (e.g. a hilar lobe in the heart)
        canvas.paint("tumour", blob, not_over=("air", "trachea_air"))
    if np.count_nonzero(canvas.where("tumour")) < 8:  # nothing left at all: a minimal tumour on the esophagus
        c = th.centre(0.5 * (zlo + zhi))
        canvas.paint("tumour", grid.mask(Ellipsoid(tuple(c), (12.0, 12.0, 12.0))),  # type: ignore[arg-type]
                     not_over=SOLID_NEIGHBOURS)
    tumour = canvas.where("tumour")
    pattern.log_mtv_ml = float(math.log(np.count_nonzero(tumour) * grid.voxel_volume / 1000.0))

    mean, amp = _suv_values(rng)
    clean = canvas.render(mean, amp, texture_field(rng, grid, 6.0))
    np.maximum(clean, 0.0, out=clean)
    uptake, sl = _tumour_uptake(rng, grid, tumour, pattern)
    clean[sl] += uptake
    halo = _halo(rng, grid, tumour, ~canvas.where(*_NO_HALO), pattern)
    halo[canvas.where("lung")] *= 0.6   # less tissue per voxel in the lung: less signal
    clean += halo

    fwhm = u(6.0, 8.0)
    blurred = blur(clean, fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))), grid.spacing)
    noise_k = u(0.1, 0.2)   # SD = k·sqrt(SUV): liver noise ≈ 10–20 %, like clinical scans
    corr = [2.5 / s for s in grid.spacing]
    noise = smooth_noise(rng, grid.shape, corr) * (noise_k * np.sqrt(np.maximum(blurred, 0.0)))
    noise += np.float32(0.01) * rng.standard_normal(grid.shape, dtype=np.float32)
    volume = np.maximum(blurred + noise, 0.0).astype(np.float32)
    label = tumour.astype(np.uint8)
    image, label_img = make_images(rng, grid, volume, label, "PT", u(-400.0, -200.0))

    prob = outcome_probability(pattern)
    outcome = int(rng.random() < prob)
    body = ~canvas.where("air", "trachea_air")
    hot = canvas.where("heart", "heart_blood", "liver", "aorta", "node", "bone")
    masks = {"tumour": tumour, "body": body, "halo": halo > 0.1, "lung": canvas.where("lung"),
             "liver": canvas.where("liver"), "myocardium": canvas.where("heart"),
             "blood_pool": canvas.where("aorta", "heart_blood"), "muscle": canvas.where("muscle"),
             "fat": canvas.where("fat", "mediastinal_fat"), "esophagus": canvas.where(*ESOPHAGUS),
             "pericardial_sac": canvas.where(*PERICARDIAL_SAC)}
    measured = _measure(volume, tumour, body, hot, grid.spacing)
    centre_idx = np.argwhere(tumour).mean(axis=0)
    meta = {
        "task": TASK, "preset": preset, "seed": int(seed), "pathology": pathology, "site": where["site"],
        "tumour_geometry": where, "latent": asdict(pattern), "latent_standardised": pattern.standardised(),
        "risk": risk_score(pattern), "outcome_probability": prob, "outcome": outcome,
        "measured": measured, "psf_fwhm_mm": float(fwhm), "noise_k": float(noise_k),
        "suv": {k: float(v) for k, v in mean.items()},
        "tumour_voxels": int(tumour.sum()), "tumour_fraction": float(tumour.mean()),
        "tumour_centre_index_zyx": centre_idx.tolist(),
        "tumour_centre_xyz_mm": image.index_to_physical(centre_idx).tolist(),
        "masks": masks,
    }
    return PhantomCase(image, label_img, CaseTargets(outcome=outcome, pathology=pathology), meta)
