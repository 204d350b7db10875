"""HCF/SANet's Balance-Sampling Strategy: ratios, the special cases, determinism, short sides."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from engine.data.balance_sampling import BALANCE_RATIOS, BalancedSliceSampler, balanced_indices

# 20 abnormal slices among 200.
ABNORMAL = np.zeros(200, dtype=bool)
ABNORMAL[50:70] = True


@pytest.mark.parametrize("ratio,k", [("1:1", 1), ("1:2", 2), ("1:4", 4)])
def test_ratios_are_exact_without_n(ratio: str, k: int):
    idx = balanced_indices(ABNORMAL, ratio, rng=0)
    n_abnormal = int(ABNORMAL[idx].sum())
    assert n_abnormal == 20 and len(idx) - n_abnormal == k * 20
    assert sorted(idx[ABNORMAL[idx]].tolist()) == list(range(50, 70))  # every abnormal slice once
    normal = idx[~ABNORMAL[idx]]
    assert len(set(normal.tolist())) == len(normal)  # undersampled without replacement


@pytest.mark.parametrize("ratio,k", [("1:1", 1), ("1:2", 2), ("1:4", 4)])
def test_ratios_with_an_epoch_length(ratio: str, k: int):
    idx = balanced_indices(ABNORMAL, ratio, n=101, rng=1)
    assert len(idx) == 101
    assert int(ABNORMAL[idx].sum()) == round(101 / (1 + k))


def test_abnormal_only_and_natural():
    only = balanced_indices(ABNORMAL, "abnormal", rng=0)
    assert sorted(only.tolist()) == list(range(50, 70))
    natural = balanced_indices(ABNORMAL, "natural", rng=0)
    assert sorted(natural.tolist()) == list(range(200))
    assert len(balanced_indices(ABNORMAL, "natural", n=50, rng=0)) == 50


def test_deterministic_by_seed_and_shuffled():
    a = balanced_indices(ABNORMAL, "1:2", rng=7)
    assert np.array_equal(a, balanced_indices(ABNORMAL, "1:2", rng=np.random.default_rng(7)))
    assert not np.array_equal(a, balanced_indices(ABNORMAL, "1:2", rng=8))
    assert ABNORMAL[a[:20]].sum() < 20  # abnormal and normal slices are mixed, not in blocks


def test_short_side_is_drawn_with_replacement():
    few_normal = np.ones(10, dtype=bool)
    few_normal[:2] = False  # 8 abnormal, 2 normal
    idx = balanced_indices(few_normal, "1:4", rng=0)
    normal = idx[~few_normal[idx]]
    assert len(normal) == 32 and set(normal.tolist()) == {0, 1}
    many = balanced_indices(ABNORMAL, "abnormal", n=50, rng=0)
    assert len(many) == 50 and ABNORMAL[many].all()


def test_impossible_requests_are_errors():
    with pytest.raises(ValueError, match="Unknown"):
        balanced_indices(ABNORMAL, "2:1")
    with pytest.raises(ValueError, match="abnormal"):
        balanced_indices(np.zeros(5, bool), "1:1")
    with pytest.raises(ValueError, match="normal"):
        balanced_indices(np.ones(5, bool), "1:2")
    assert BALANCE_RATIOS == ("abnormal", "1:1", "1:2", "1:4", "natural")


def test_sampler_draws_a_new_deterministic_epoch_each_time():
    sampler = BalancedSliceSampler(ABNORMAL, "1:1", seed=3)
    assert len(sampler) == 40
    first, second = list(sampler), list(sampler)
    assert len(first) == 40 and first != second
    again = BalancedSliceSampler(ABNORMAL, "1:1", seed=3)
    assert list(again) == first
    again.set_epoch(1)
    assert list(again) == second
    batches = list(DataLoader(list(range(200)), batch_size=8, sampler=BalancedSliceSampler(ABNORMAL, "1:4", 64)))
    assert sum(len(b) for b in batches) == 64
