"""Training patches: shapes, padding, foreground oversampling, cascade prior handling, plain tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.data.patches import (PatchDataset, RandPerturbPriord, TrainingCase, nnunet_augmentation, one_hot,
                                 plain_tensor, sample_centre)


def _case(shape=(12, 20, 20), prior_channels: int = 0) -> TrainingCase:
    """A CT-like channel plus an optional one-hot prior; one small class-1 cube, one large class-2 slab."""
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.uint8)
    label[2:4, 3:5, 3:5] = 1
    label[8:, :, :] = 2
    ct = rng.normal(size=(1, *shape)).astype(np.float32)
    channels = [ct]
    if prior_channels:
        channels.append(one_hot(label, prior_channels))
    return TrainingCase("c0", np.concatenate(channels, 0), label, stage=1)


def test_sample_centre_picks_the_weighted_class():
    label = _case().label
    rng = np.random.default_rng(1)
    centres = [sample_centre(rng, label, True, class_weights=[0.0, 1.0, 0.0]) for _ in range(50)]
    assert all(label[tuple(int(c) for c in centre)] == 1 for centre in centres)
    # without foreground, centres are uniform positions inside the volume
    uniform = [sample_centre(rng, label, False) for _ in range(50)]
    assert all(0 <= c <= n - 1 for centre in uniform for c, n in zip(centre, label.shape))


def test_sample_centre_on_empty_label_falls_back_to_uniform():
    label = np.zeros((4, 5, 6), np.uint8)
    centre = sample_centre(np.random.default_rng(0), label, True, class_weights=[0.0, 1.0])
    assert all(0 <= c <= n - 1 for c, n in zip(centre, label.shape))


def test_patches_have_patch_size_and_pad_beyond_the_volume():
    case = _case()
    data = PatchDataset([case], patch_size=(16, 24, 24), samples=6)  # larger than the volume in y, x
    np.random.seed(0)
    for i in range(len(data)):
        item = data[i]
        assert item["image"].shape == (1, 16, 24, 24) and item["label"].shape == (1, 16, 24, 24)
        assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
        # padding uses the channel minimum (air), never a value below it
        assert float(item["image"].min()) >= float(case.image.min()) - 1e-6
        assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}


def test_foreground_fraction_one_always_contains_the_small_class():
    data = PatchDataset([_case()], patch_size=(4, 6, 6), samples=20, foreground_fraction=1.0,
                        class_weights=[0.0, 1.0, 0.0])
    np.random.seed(3)
    # jitter is at most a quarter patch, so the 2-voxel cube stays inside every 4x6x6 patch
    assert all(int((data[i]["label"] == 1).sum()) > 0 for i in range(len(data)))


def test_seeded_sampling_is_reproducible():
    data = PatchDataset([_case()], patch_size=(8, 8, 8), samples=4, augment=nnunet_augmentation())

    def draw():
        np.random.seed(42)
        return [data[i] for i in range(len(data))]

    for a, b in zip(draw(), draw()):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_augmented_items_are_plain_tensors():
    """MONAI returns MetaTensors; they must not reach the network (slow per-op metadata tracking)."""
    data = PatchDataset([_case()], patch_size=(8, 12, 12), samples=4, augment=nnunet_augmentation())
    np.random.seed(0)
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    assert type(batch["image"]) is torch.Tensor and type(batch["label"]) is torch.Tensor


@pytest.mark.parametrize("anisotropic", [False, True])
def test_prior_channels_stay_one_hot_and_move_with_the_label(anisotropic):
    """The cascade prior gets the spatial transforms (nearest) but no intensity augmentation."""
    case = _case(prior_channels=3)
    aug = nnunet_augmentation(anisotropic=anisotropic, prior_channels=3)
    data = PatchDataset([case], patch_size=(12, 20, 20), samples=30, augment=aug, foreground_fraction=1.0)
    np.random.seed(5)
    for i in range(len(data)):
        item = data[i]
        prior = item["image"][1:]
        assert item["image"].shape == (4, 12, 20, 20)
        assert set(torch.unique(prior).tolist()) <= {0.0, 1.0}
        # the prior was made from the label itself, so after any spatial transform they still agree
        # except where padding filled in (prior all zero there)
        covered = prior.sum(0) > 0
        assert torch.equal(prior.argmax(0)[covered], item["label"][0][covered])


def test_plain_tensor_strips_metadata():
    from monai.data import MetaTensor

    x = MetaTensor(torch.ones(2, 3))
    y = plain_tensor(x)
    assert type(y) is torch.Tensor and torch.equal(y, torch.ones(2, 3))


def _one_hot(labels: np.ndarray, classes: int = 4) -> torch.Tensor:
    return torch.from_numpy(one_hot(labels, classes))


def _cube(classes_elsewhere: bool = False) -> np.ndarray:
    """Class 1: a 3×3×3 cube in the middle of a 9³ background (and a class-3 voxel in a corner)."""
    labels = np.zeros((9, 9, 9), np.int64)
    labels[3:6, 3:6, 3:6] = 1
    if classes_elsewhere:
        labels[0, 0, 0] = 3
    return labels


def _perturb(labels: np.ndarray, operation, seed: int = 0, **kwargs) -> np.ndarray:
    t = RandPerturbPriord("prior", **kwargs)
    t.OPERATIONS = (operation,)
    t.set_random_state(seed=seed)
    out = t({"prior": _one_hot(labels)})["prior"]
    assert torch.equal(out.sum(0), torch.ones(out.shape[1:])) and set(torch.unique(out).tolist()) <= {0.0, 1.0}
    return out.argmax(0).numpy()


def test_prior_perturbation_dilates_and_erodes_each_class():
    from scipy import ndimage

    labels = _cube()
    grown = _perturb(labels, ndimage.binary_dilation, max_radius=1, prob=1.0, remove_prob=0.0)
    assert (grown == 1).sum() == 27 + 6 * 9                            # one cross step adds the 6 faces
    assert (grown[labels == 1] == 1).all()
    shrunk = _perturb(labels, ndimage.binary_erosion, max_radius=1, prob=1.0, remove_prob=0.0)
    assert (shrunk == 1).sum() == 1 and shrunk[4, 4, 4] == 1          # the centre survives one step
    assert (shrunk[(labels == 1) & (shrunk != 1)] == 0).all()          # the rest became background
    # eroding away a one-voxel class leaves background, and the other class is untouched
    both = _perturb(_cube(classes_elsewhere=True), ndimage.binary_erosion, max_radius=1, prob=1.0,
                    remove_prob=0.0)
    assert (both == 3).sum() == 0 and both[0, 0, 0] == 0 and (both == 1).sum() == 1


def test_prior_perturbation_keeps_voxels_without_a_prior_empty():
    """Padding outside the volume carries an all-zero prior, as at inference; perturbing a patch must not
    turn it into "background" (argmax of all-zero) or grow a class into it."""
    from scipy import ndimage

    labels = _cube()
    prior = _one_hot(labels)
    prior[:, :, :, 6:] = 0.0  # the last three columns lie outside the volume
    t = RandPerturbPriord("prior", prob=1.0, remove_prob=0.0, max_radius=2)
    t.OPERATIONS = (ndimage.binary_dilation,)
    t.set_random_state(seed=0)
    out = t({"prior": prior})["prior"]
    assert (out[:, :, :, 6:] == 0).all()
    inside = out[:, :, :, :6]
    assert torch.equal(inside.sum(0), torch.ones(inside.shape[1:]))
    assert (inside.argmax(0) == 1).sum() > (labels[:, :, :6] == 1).sum()  # the cube did grow


def test_prior_perturbation_off_is_the_identity_and_seeded_runs_repeat():
    from scipy import ndimage

    labels = _cube()
    t = RandPerturbPriord("prior", prob=0.0, remove_prob=0.0)
    prior = _one_hot(labels)
    assert torch.equal(t({"prior": prior})["prior"], prior)
    a = _perturb(labels, ndimage.binary_dilation, seed=3)
    b = _perturb(labels, ndimage.binary_dilation, seed=3)
    assert np.array_equal(a, b)


def test_prior_perturbation_removes_one_small_component():
    from scipy import ndimage

    labels = np.zeros((9, 9, 9), np.int64)
    labels[1, 1, 1] = 1
    labels[7, 7, 7] = 1
    labels[:, :, 4] = 2  # a slab of 81 of 729 voxels: more than 10 % of the patch, never removed
    out = _perturb(labels, ndimage.binary_dilation, prob=0.0, remove_prob=1.0, max_component_fraction=0.1)
    assert (out == 1).sum() == 1 and (out == 2).sum() == 81


def test_augmentation_adds_the_prior_perturbation_only_when_asked():
    names = [type(t).__name__ for t in nnunet_augmentation(prior_channels=3, perturb_prior=True).transforms]
    assert names.count("RandPerturbPriord") == 1
    for aug in (nnunet_augmentation(prior_channels=3), nnunet_augmentation(perturb_prior=True)):
        assert "RandPerturbPriord" not in [type(t).__name__ for t in aug.transforms]
    case = _case(prior_channels=3)
    data = PatchDataset([case], (8, 16, 16), samples=6, augment=nnunet_augmentation(prior_channels=3,
                                                                                   perturb_prior=True))
    np.random.seed(1)
    for i in range(len(data)):
        prior = data[i]["image"][1:]
        assert set(torch.unique(prior).tolist()) <= {0.0, 1.0} and (prior.sum(0) <= 1).all()
