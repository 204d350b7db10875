"""The PET network's parts: each loss term, the tumour statistics, the multi-scale pooling, Grad-CAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.explain.gradcam import grad_cam
from engine.tasks.pet.gradcam import multi_scale_grad_cam
from engine.tasks.pet.losses import LossWeights, MultiTaskLoss
from engine.tasks.pet.networks import (
    MULTI_SCALE_LEVELS,
    N_STATISTICS,
    PetMultiTaskNet,
    PetNetworkSpec,
    PetOutputs,
    tumour_statistics,
)

CROP = (32, 32, 32)


def _net(**kw) -> PetMultiTaskNet:
    torch.manual_seed(0)
    return PetMultiTaskNet(PetNetworkSpec(width=2, crop_size=CROP, **kw)).eval()


def _outputs(seg=None, recon=None, pathology=None, outcome=(0.0,)) -> PetOutputs:
    return PetOutputs(torch.tensor(outcome, dtype=torch.float32), seg, recon, pathology, [])


def test_each_loss_term_is_its_textbook_value():
    image = torch.rand(1, 1, 4, 4, 4)
    label = (torch.rand(1, 1, 4, 4, 4) > 0.5).float()
    loss = MultiTaskLoss(LossWeights())
    recon = image + 0.5
    seg = (label * 2 - 1) * 50.0          # confident and right: Dice loss ~ 0
    pathology = torch.tensor([[2.0, 0.0]])
    terms = loss.terms(_outputs(seg, recon, pathology, (1.0,)), image, label, torch.tensor([0]), torch.tensor([1]))
    assert terms["reconstruction"].item() == pytest.approx(0.25)
    assert terms["segmentation"].item() == pytest.approx(0.0, abs=1e-4)
    assert terms["pathology"].item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)
    assert terms["outcome"].item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-5)
    wrong = loss.terms(_outputs(-seg), image, label, torch.tensor([0]), torch.tensor([1]))
    assert wrong["segmentation"].item() == pytest.approx(1.0, abs=1e-3)


def test_false_positives_in_a_crop_without_tumour_are_penalised():
    """The Dice over the batch: a crop without tumour adds its false positives to the denominator."""
    label = torch.zeros(2, 1, 6, 6, 6)
    label[0, :, 2:4, 2:4, 2:4] = 1
    logits = (label * 2 - 1) * 20.0                 # crop 0 right; crop 1 empty and predicted empty
    loss = MultiTaskLoss(LossWeights())
    clean = loss.terms(_outputs(logits, outcome=(0.0, 0.0)), label, label, torch.tensor([-1, -1]),
                       torch.tensor([-1, -1]))["segmentation"]
    noisy = logits.clone()
    noisy[1, :, :3] = 20.0                          # false positives in the crop without tumour
    fp = loss.terms(_outputs(noisy, outcome=(0.0, 0.0)), label, label, torch.tensor([-1, -1]),
                    torch.tensor([-1, -1]))["segmentation"]
    assert clean.item() == pytest.approx(0.0, abs=1e-4) and fp.item() > 0.8


def test_total_is_the_weighted_sum_and_unknown_targets_are_left_out():
    image = torch.rand(2, 1, 4, 4, 4)
    label = torch.zeros(2, 1, 4, 4, 4)
    label[:, :, 1:3, 1:3, 1:3] = 1
    weights = LossWeights(reconstruction=0.5, segmentation=2.0, pathology=3.0, outcome=0.3)
    out = _outputs(torch.zeros(2, 1, 4, 4, 4), image * 0.9, torch.tensor([[1.0, -1.0], [0.0, 0.0]]), (2.0, -2.0))
    total, terms = MultiTaskLoss(weights)(out, image, label, torch.tensor([1, -1]), torch.tensor([-1, 0]))
    expected = 0.5 * terms["reconstruction"] + 2 * terms["segmentation"] + 3 * terms["pathology"] + 0.3 * terms["outcome"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # only the known targets count: case 0's pathology (1), case 1's outcome (0) with logit -2
    assert terms["pathology"] == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-5)
    assert terms["outcome"] == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)
    absent = MultiTaskLoss(weights).terms(_outputs(outcome=(0.0, 0.0)), image, label, torch.tensor([-1, -1]),
                                          torch.tensor([1, 1]))
    assert set(absent) == {"outcome"}


def test_tumour_statistics_measure_the_tumour_and_its_shells():
    suv = torch.full((1, 1, 24, 24, 24), 1.0)
    mask = torch.zeros_like(suv)
    mask[..., 8:16, 8:16, 8:16] = 1.0
    suv[mask > 0] = 10.0
    suv[..., 10, 10, 10] = 20.0
    stats = tumour_statistics(suv, mask, voxel_ml=0.008)[0]
    assert stats.shape == (N_STATISTICS,)
    assert math.exp(stats[0]) == pytest.approx(512 * 0.008, rel=1e-3)       # volume in ml
    assert math.exp(stats[1]) == pytest.approx((511 * 10 + 20) / 512, rel=1e-3)
    assert math.exp(stats[2]) == pytest.approx(20.0, rel=1e-3)
    assert stats[4].item() == pytest.approx(1.0, rel=1e-3)                    # shells hold background uptake
    assert stats[6].item() == pytest.approx(1.0 / ((511 * 10 + 20) / 512), rel=1e-2)
    suv_halo = suv.clone()
    suv_halo[..., 6:18, 6:18, 6:18] += 2.0 * (mask[..., 6:18, 6:18, 6:18] == 0)
    assert tumour_statistics(suv_halo, mask, 0.008)[0, 4] > stats[4] + 1.5    # a peritumoral halo shows


def test_outcome_uses_the_pooled_features_of_levels_3_to_5():
    multi, tumour_only = _net(), _net(multi_scale=False)
    pooled = sum(multi.spec.channels[lv - 1] for lv in MULTI_SCALE_LEVELS)
    assert multi.outcome[0].in_features == tumour_only.outcome[0].in_features + pooled
    x = torch.rand(1, 1, *CROP)
    captured = {}
    multi.outcome.register_forward_hook(lambda m, args, out: captured.setdefault("in", args[0]))
    with torch.no_grad():
        out = multi(x)
    expected = torch.cat([out.encoder_features[lv - 1].mean(dim=(2, 3, 4)) for lv in MULTI_SCALE_LEVELS], 1)
    torch.testing.assert_close(captured["in"][:, -pooled:], expected)
    single = _net(segmentation=False, pathology=False, reconstruction=False)
    assert single.outcome[0].in_features == pooled and single.segmentation is None and single.reconstruction is None


def test_multi_scale_grad_cam_matches_the_generic_grad_cam_per_level():
    net = _net()
    x = torch.rand(1, 1, *CROP) * 2
    cams = multi_scale_grad_cam(net, x)
    assert sorted(cams.level_maps) == list(MULTI_SCALE_LEVELS)
    for level, cam in cams.level_maps.items():
        reference = grad_cam(net, net.encoder[level - 1], x, class_index=0,
                             forward=lambda t: net(t).outcome_logit[:, None])
        np.testing.assert_allclose(cam, reference.cam, atol=1e-5)
    assert cams.combined.shape == CROP and 0.0 <= cams.combined.min() and cams.combined.max() == pytest.approx(1.0)
    assert not net.training
    with torch.no_grad():
        assert cams.outputs.outcome_logit.item() == pytest.approx(net(x).outcome_logit.item(), abs=1e-5)


@pytest.mark.parametrize("switches, heads", [
    ({}, {"reconstruction", "segmentation", "pathology", "outcome"}),
    ({"reconstruction": False}, {"segmentation", "pathology", "outcome"}),
    ({"multi_scale": False}, {"reconstruction", "segmentation", "pathology", "outcome"}),
    ({"single_task": True}, {"outcome"}),
])
def test_ablation_switches_build_the_papers_variants(switches, heads):
    from engine.tasks.pet.options import PetTrainOptions
    from engine.tasks.pet.training import network_spec

    options = PetTrainOptions(width=2, crop_size=32, **switches)
    net = PetMultiTaskNet(network_spec(options)).eval()
    x = torch.rand(2, 1, *CROP)
    with torch.no_grad():
        out = net(x)
    terms = MultiTaskLoss(LossWeights()).terms(out, x, (x > 0.9).float(), torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert set(terms) == heads
    pooled = sum(net.spec.channels[lv - 1] for lv in MULTI_SCALE_LEVELS)
    tumour = net.tumour_branch.out_features + N_STATISTICS if net.tumour_branch is not None else 0
    assert (net.tumour_branch is None) == options.single_task
    assert net.outcome[0].in_features == tumour + (pooled if options.multi_scale or options.single_task else 0)
    assert options.variant == {"single_task": "single-task", "multi_scale": "no-multiscale",
                               "reconstruction": "no-reconstruction"}.get(next(iter(switches), ""), "multitask")
