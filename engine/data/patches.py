"""Training patches from preprocessed cases: foreground oversampling + nnU-Net's augmentation set.

nnU-Net samples a third of its patches centred on a foreground voxel (otherwise tumours a few
hundred voxels large would hardly be seen) and augments with rotation, scaling, Gaussian noise and
blur, brightness, contrast, gamma and mirroring. The augmentations are MONAI dictionary transforms;
only the class-balanced patch centre choice is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.utils import convert_to_tensor
from scipy import ndimage
from torch.utils.data import Dataset

from engine.inference.krt import box_around, crop_box


@dataclass
class TrainingCase:
    """One preprocessed case in memory: ``image`` (C, z, y, x) float32, ``label`` (z, y, x) uint8."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    stage: int | None = None


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(z, y, x) class indices → (num_classes, z, y, x) float32 one-hot, the cascade prior's encoding."""
    return (labels[None] == np.arange(num_classes).reshape(-1, 1, 1, 1)).astype(np.float32)


class RandPerturbPriord(mt.Randomizable, mt.MapTransform):
    """nnU-Net's cascade augmentation of the previous stage's one-hot segmentation (the "prior").

    nnU-Net perturbs it so that a cascade's second stage learns to correct the previous stage's extent
    rather than copy it (on the esophageal phantoms it measured no gain in tumour Dice).
    With probability ``prob`` per sample, each foreground class in random order (each with
    ``prob_per_class``) is dilated, eroded, opened or closed by 1–``max_radius`` voxel steps (the
    6-neighbour cross, iterated); grown voxels take the class from whatever was there, removed ones
    become background. Then, with ``remove_prob``, each class loses one random connected
    component smaller than ``max_component_fraction`` of the patch. Channel 0 is background; the
    result stays one-hot, except that voxels with an all-zero prior (the preprocessing's padding and
    patch crops reaching outside the volume, which inference also sees as all-zero) stay all-zero.
    """

    OPERATIONS = (ndimage.binary_dilation, ndimage.binary_erosion, ndimage.binary_opening,
                  ndimage.binary_closing)
    STEP = ndimage.generate_binary_structure(3, 1)  # one step: the 6-neighbour cross

    def __init__(self, keys, prob: float = 0.4, prob_per_class: float = 1.0, max_radius: int = 8,
                 remove_prob: float = 0.2, max_component_fraction: float = 0.15):
        mt.MapTransform.__init__(self, keys)
        self.prob, self.prob_per_class, self.max_radius = prob, prob_per_class, max_radius
        self.remove_prob, self.max_component_fraction = remove_prob, max_component_fraction

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.perturb(d[key])
        return d

    def perturb(self, prior) -> torch.Tensor:
        prior = plain_tensor(prior).float()
        n_classes = prior.shape[0]
        outside = (prior.sum(0) == 0).numpy()
        labels = prior.argmax(0).numpy().astype(np.int16)
        changed = False
        if self.R.random_sample() < self.prob:
            for c in self.R.permutation(np.arange(1, n_classes)):
                mask = labels == c
                if self.R.random_sample() >= self.prob_per_class or not mask.any():
                    continue
                operation = self.OPERATIONS[self.R.randint(len(self.OPERATIONS))]
                steps = int(self.R.randint(1, self.max_radius + 1))
                result = operation(mask, structure=self.STEP, iterations=steps)
                labels[mask & ~result] = 0
                labels[result] = c
                changed = True
        if self.R.random_sample() < self.remove_prob:
            for c in range(1, n_classes):
                components, count = ndimage.label(labels == c)
                if count == 0:
                    continue
                sizes = np.bincount(components.ravel())[1:]
                small = np.flatnonzero(sizes < self.max_component_fraction * labels.size) + 1
                if len(small):
                    labels[components == self.R.choice(small)] = 0
                    changed = True
        if not changed:
            return prior
        perturbed = one_hot(labels, n_classes)
        perturbed[:, outside] = 0.0
        return torch.from_numpy(perturbed)


def nnunet_augmentation(anisotropic: bool = False, mirror: bool = True, prior_channels: int = 0,
                        perturb_prior: bool = False) -> mt.Compose:
    """nnU-Net v2's default augmentation probabilities and ranges, as MONAI transforms.

    With thick slices (``anisotropic``) rotations stay in-plane, as nnU-Net does for such data.
    ``prior_channels`` trailing image channels (a cascade's one-hot previous-stage prediction) move
    with the spatial transforms (nearest neighbour) but get no intensity augmentation;
    ``perturb_prior`` adds :class:`RandPerturbPriord` to them (nnU-Net's cascade does).
    """
    in_plane, out_plane = math.radians(30), (0.0 if anisotropic else math.radians(30))
    keys: tuple[str, ...] = ("image", "label") + (("prior",) if prior_channels else ())
    modes = ("bilinear", "nearest") + (("nearest",) if prior_channels else ())
    steps: list = [
        mt.RandAffined(keys, prob=0.2, rotate_range=(in_plane, out_plane, out_plane), scale_range=(0.15,) * 3,
                       mode=modes, padding_mode="border"),
        mt.RandGaussianNoised("image", prob=0.1, std=0.1),
        mt.RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandScaleIntensityd("image", prob=0.15, factors=0.25),            # brightness × [0.75, 1.25]
        mt.RandScaleIntensityFixedMeand("image", prob=0.15, factors=0.25, preserve_range=True),  # contrast
        mt.RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),  # gamma
    ]
    if mirror:
        steps += [mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
    if perturb_prior and prior_channels:
        steps.append(RandPerturbPriord("prior"))
    compose = mt.Compose(steps)
    compose.prior_channels = prior_channels  # type: ignore[attr-defined]
    return compose


def plain_tensor(x) -> torch.Tensor:
    """A ``torch.Tensor`` without MONAI metadata (MetaTensor), whatever ``x`` is."""
    return convert_to_tensor(x, track_meta=False)


def sample_centre(rng: np.random.Generator, label: np.ndarray, foreground: bool,
                  class_weights: Sequence[float] | None = None) -> tuple[float, float, float]:
    """A voxel of a (weighted) random foreground class present in ``label``, or a uniform position."""
    if foreground:
        present = [c for c in np.unique(label) if c != 0]
        if present:
            w = np.array([class_weights[c] if class_weights is not None and c < len(class_weights) else 1.0
                          for c in present], dtype=np.float64)
            cls = present[int(rng.choice(len(present), p=w / w.sum()))]
            idx = np.argwhere(label == cls)
            return tuple(float(v) for v in idx[int(rng.integers(len(idx)))])  # type: ignore[return-value]
    return tuple(float(rng.uniform(0, n - 1)) for n in label.shape)  # type: ignore[return-value]


class PatchDataset(Dataset):
    """``samples`` random patches per epoch from ``cases``.

    A ``foreground_fraction`` of the patches is centred on a foreground voxel (class chosen with
    ``class_weights``, e.g. favouring the tumour). Randomness comes from NumPy's global generator
    per item, which the trainer seeds per run and per worker, so runs are reproducible.
    """

    def __init__(self, cases: Sequence[TrainingCase], patch_size: Sequence[int], samples: int,
                 augment: mt.Compose | None = None, foreground_fraction: float = 1 / 3,
                 class_weights: Sequence[float] | None = None):
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = list(cases)
        self.patch_size = [int(p) for p in patch_size]
        self.samples = int(samples)
        self.augment = augment
        self.foreground_fraction = foreground_fraction
        self.class_weights = class_weights

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        case = self.cases[int(rng.integers(len(self.cases)))]
        centre = sample_centre(rng, case.label, rng.random() < self.foreground_fraction, self.class_weights)
        jitter = [rng.uniform(-p / 4, p / 4) for p in self.patch_size]
        box = box_around([c + j for c, j in zip(centre, jitter)], self.patch_size, "sample")
        image = crop_box(case.image, box, pad_value=case.image.reshape(case.image.shape[0], -1).min(axis=1))
        label = crop_box(case.label[None], box, pad_value=0)
        item = {"image": torch.from_numpy(image), "label": torch.from_numpy(label.astype(np.int64))}
        if self.augment is not None:
            prior = int(getattr(self.augment, "prior_channels", 0))
            if prior:
                item["image"], item["prior"] = item["image"][:-prior], item["image"][-prior:]
            self.augment.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
            item = self.augment(item)
            # plain tensors: MONAI returns MetaTensors, whose per-op metadata tracking would follow the
            # batch through the whole network and make each training step several times slower
            channels = [plain_tensor(item["image"]).float()]
            if prior:
                channels.append(plain_tensor(item["prior"]).float().round())
            item = {"image": torch.cat(channels, 0), "label": plain_tensor(item["label"]).round().long()}
        return item
