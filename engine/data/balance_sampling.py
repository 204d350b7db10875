"""HCF/SANet's Balance-Sampling Strategy (BSS): the abnormal:normal slice ratio seen per epoch.

Most CT slices hold no GTV; training on all of them biases both the slice classifier and the
segmenter towards "normal". BSS undersamples the normal slices each epoch at a ratio θ chosen
separately for each network (the paper's best differ):

- ``"abnormal"`` (θ0): abnormal slices only (for the segmenter, which sees only kept slices);
- ``"1:1"``, ``"1:2"``, ``"1:4"`` (θ1, θ2, θ4): abnormal:normal = 1:k;
- ``"natural"`` (θn): every slice, the data set's own ratio.

A side too small for its share is drawn with replacement; draws are deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

BALANCE_RATIOS = ("abnormal", "1:1", "1:2", "1:4", "natural")


def _normal_per_abnormal(ratio: str) -> int | None:
    """k of ``"1:k"``; None for ``"abnormal"`` and ``"natural"``."""
    if ratio not in BALANCE_RATIOS:
        raise ValueError(f"Unknown balance ratio '{ratio}'; choose one of {', '.join(BALANCE_RATIOS)}")
    return int(ratio.split(":")[1]) if ":" in ratio else None


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices from ``pool``: without replacement when it is large enough, else with."""
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    return rng.choice(pool, size=count, replace=count > pool.size).astype(np.int64)


def balanced_indices(abnormal: np.ndarray, ratio: str, n: int | None = None,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Slice indices for one epoch, shuffled.

    ``abnormal`` is a boolean per slice (GTV present). ``n`` is the epoch length; None means: all
    abnormal slices plus k normal ones per abnormal slice (``"1:k"``), all abnormal slices
    (``"abnormal"``) or all slices (``"natural"``). With ``n`` the abnormal share is
    round(n / (1 + k)). ``rng`` is a generator or a seed.
    """
    flags = np.asarray(abnormal, dtype=bool).ravel()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    k = _normal_per_abnormal(ratio)
    if n is not None and n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if ratio == "natural":
        everything = np.arange(flags.size, dtype=np.int64)
        return rng.permutation(everything) if n is None else _draw(everything, n, rng)
    abnormal_idx, normal_idx = np.flatnonzero(flags), np.flatnonzero(~flags)
    if abnormal_idx.size == 0:
        raise ValueError(f"Balance ratio '{ratio}' needs abnormal slices, and there are none")
    if k is None:  # "abnormal"
        n_abnormal, n_normal = (abnormal_idx.size if n is None else n), 0
    else:
        if normal_idx.size == 0:
            raise ValueError(f"Balance ratio '{ratio}' needs normal slices, and there are none")
        n_abnormal = abnormal_idx.size if n is None else round(n / (1 + k))
        n_normal = k * n_abnormal if n is None else n - n_abnormal
    chosen = np.concatenate([_draw(abnormal_idx, n_abnormal, rng), _draw(normal_idx, n_normal, rng)])
    return rng.permutation(chosen)


class BalancedSliceSampler(Sampler[int]):
    """A ``DataLoader`` sampler drawing a fresh balanced epoch each time it is iterated.

    Epoch e uses the seed sequence (``seed``, e), so runs repeat exactly and resumed training can
    call ``set_epoch`` to continue the same sequence.
    """

    def __init__(self, abnormal: np.ndarray, ratio: str, num_samples: int | None = None, seed: int = 0):
        self.abnormal = np.asarray(abnormal, dtype=bool).ravel()
        self.ratio, self.num_samples, self.seed = ratio, num_samples, int(seed)
        self.epoch = 0
        self._length = len(self._indices(0))

    def _indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return balanced_indices(self.abnormal, self.ratio, self.num_samples, rng)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = self._indices(self.epoch)
        self.epoch += 1
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self._length
