"""What every phantom generator shares: the case container, seeding, stage sampling, scan finishing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.data.dataset import CaseTargets
from engine.errors import EngineError
from engine.io.image import Image
from engine.synth.shapes import Grid, blur, smooth_noise
from engine.tasks.base import T_STAGES as STAGES


class SynthError(EngineError):
    """A phantom request cannot be honoured (unknown task or preset, bad case count or seed)."""


@dataclass
class PhantomCase:
    """One generated case: image (one or more channels), label map, targets and provenance.

    ``meta`` holds what the generator decided and measured (stage sampled and re-derived,
    tumour centre, invasion depth, ...) and, under ``meta["masks"]``, boolean masks of the
    anatomical compartments the stage rule was judged on, so tests can check the rule.
    """

    image: Image | list[Image]
    label: Image
    targets: CaseTargets
    meta: dict = field(default_factory=dict)

    @property
    def channels(self) -> list[Image]:
        return self.image if isinstance(self.image, list) else [self.image]


@dataclass(frozen=True)
class Preset:
    """Grid of one preset: array shape and spacing, both in (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def case_seed(seed: int, index: int, test: bool = False) -> int:
    """Seed of case ``index`` of a dataset made with ``seed``.

    Derived with NumPy's SeedSequence from (seed, split, index) only, so a case does not
    depend on how many cases are generated, and training and test cases never coincide.
    """
    state = np.random.SeedSequence([int(seed), 1 if test else 0, int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def sample_stage(rng: np.random.Generator, probabilities: Sequence[float]) -> str:
    """Draw one of T1..T4 with the given probabilities (normalised here)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return STAGES[int(rng.choice(len(STAGES), p=p / p.sum()))]


def make_grid(rng: np.random.Generator, preset: Preset, shift: Sequence[float], max_angle_deg: float) -> Grid:
    """A grid with a per-case in-plane rotation; ``shift`` places the field of view on the anatomy."""
    return Grid(preset.shape, preset.spacing, float(rng.uniform(-max_angle_deg, max_angle_deg)),
                tuple(float(s) for s in shift))  # type: ignore[arg-type]


def make_images(rng: np.random.Generator, grid: Grid, volume: np.ndarray, label: np.ndarray,
                modality: str, z_origin: float) -> tuple[Image, Image]:
    """Image and label on the same geometry: identity direction, origin centred in-plane.

    The origin moves by a few mm per case, as it does between real scans.
    """
    half = grid.half_extent
    jitter = rng.uniform(-5.0, 5.0, size=3)
    origin = (-half[2] + jitter[0], -half[1] + jitter[1], z_origin + jitter[2])
    image = Image(np.ascontiguousarray(volume, dtype=np.float32), grid.spacing, origin, np.eye(3), modality)
    lab = Image(np.ascontiguousarray(label, dtype=np.uint8), grid.spacing, origin, np.eye(3), modality=None)
    return image, lab


def finish_ct(rng: np.random.Generator, grid: Grid, clean: np.ndarray, noise_sd: float,
              psf_mm: float = 0.7) -> np.ndarray:
    """Scanner effects on an ideal HU map: partial-volume blur, correlated quantum noise, clipping."""
    img = blur(clean, psf_mm, grid.spacing, min_sigma_vox=0.5)
    img += np.float32(noise_sd) * smooth_noise(rng, grid.shape, 0.6)
    return np.clip(img, -1024.0, 3071.0, out=img)


def texture_field(rng: np.random.Generator, grid: Grid, scale_mm: float) -> np.ndarray:
    """Unit-variance tissue texture with a correlation length in mm."""
    return smooth_noise(rng, grid.shape, [scale_mm / s for s in grid.spacing])
