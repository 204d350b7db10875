"""Test-time mirroring of a classifier: the mean softmax over mirrored copies of its inputs.

Only mirror axes the network saw during training are valid: a flip it never saw (the cranio-caudal
axis for the stage classifier) would feed it images unlike any it learned from.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch


def mirror_subsets(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of the axes, the unmirrored input (``()``) first: 2**len(axes) of them."""
    axes = tuple(dict.fromkeys(int(a) for a in spatial_axes))
    return [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]


def mirrored_class_probabilities(forward: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None],
                                 spatial_axes: Sequence[int] = (),
                                 plain_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ``forward(*inputs)`` (N×K logits) averaged over every mirroring of ``spatial_axes``.

    ``inputs`` are (N, C, z, y, x) tensors, all mirrored alike (None passes through); spatial axis 0
    is z. With no axes this is the plain softmax. ``plain_logits``: ``forward(*inputs)`` when the caller
    already has it (e.g. for a loss), so the unmirrored pass is not run twice.
    """
    subsets = mirror_subsets(spatial_axes)
    total: torch.Tensor | None = None
    for subset in subsets:
        dims = tuple(a + 2 for a in subset)
        if not dims and plain_logits is not None:
            logits = plain_logits
        else:
            logits = forward(*[x if x is None or not dims else torch.flip(x, dims) for x in inputs])
        probs = torch.softmax(logits.float(), dim=1)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(subsets)
