"""The NPC network's shapes at the demo and the paper's widths, and what each ablation switch removes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.tasks.npc.blocks import BottleneckAttention
from engine.tasks.npc.networks import NpcNetwork, network_config

DEMO = {"patch_size": (16, 64, 64), "spacing": (6.0, 1.64, 1.64), "unet_width": 8, "unet_max_width": 64,
        "stage_width": 8, "num_stages": 4}
TINY = {"patch_size": (16, 32, 32), "spacing": (6.0, 3.28, 3.28), "unet_width": 8, "unet_max_width": 16,
        "stage_width": 8, "num_stages": 4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_the_paper_network_maps_a_21_x_224_x_224_crop_to_a_mask_and_four_stages():
    config = network_config((21, 224, 224), (6.0, 0.4688, 0.4688), 32, 320, 64, 4)
    assert config.unet_widths == [32, 64, 128, 256, 320] and config.thick_slices
    assert config.padded_size == [22, 224, 224]  # the slice axis is pooled once
    assert config.stage_sizes() == ([3, 14, 14], [2, 7, 7])
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        net = NpcNetwork(config)
        seg, stage = net(torch.empty(1, 1, 21, 224, 224))
    assert seg.shape == (1, 1, 21, 224, 224) and stage.shape == (1, 4)
    assert sum(isinstance(b.conv2, BottleneckAttention) for b in net.stage.layer4) == 3
    assert [len(layer) for layer in (net.stage.layer1, net.stage.layer2, net.stage.layer3, net.stage.layer4)] == \
        [3, 4, 6, 3]  # ResNet-50


def test_the_demo_network_runs_on_a_batch():
    net = NpcNetwork(network_config(**DEMO)).eval()
    with torch.no_grad():
        seg, stage = net(torch.randn(2, 1, 16, 64, 64))
    assert seg.shape == (2, 1, 16, 64, 64) and stage.shape == (2, 4)
    assert sum(p.numel() for p in net.parameters()) < 3_000_000  # a few MB of weights


def test_a_larger_input_than_the_patch_is_refused():
    net = NpcNetwork(network_config(**TINY))
    with pytest.raises(ValueError, match="larger than the network's patch"):
        net(torch.randn(1, 1, 16, 40, 32))


def test_ablations_remove_their_block():
    plain = NpcNetwork(network_config(**TINY, bot=False))
    assert all(isinstance(b.conv2, nn.Conv3d) for b in plain.stage.layer4)
    assert NpcNetwork(network_config(**TINY, fusion=False)).fusion is None


def _stage_logits_after_changing_the_segmentation(gating: bool) -> tuple[torch.Tensor, torch.Tensor]:
    net = NpcNetwork(network_config(**TINY, fusion=False, gating=gating)).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        before = net(x)[1]
        net.segmentation.head.conv.conv.bias.add_(3.0)  # the probability map changes everywhere
        return before, net(x)[1]


def test_gating_feeds_the_probability_map_to_the_stage_branch():
    before, after = _stage_logits_after_changing_the_segmentation(gating=True)
    assert not torch.allclose(before, after)
    before, after = _stage_logits_after_changing_the_segmentation(gating=False)
    torch.testing.assert_close(before, after)  # without gating (and fusion) staging ignores the segmentation
