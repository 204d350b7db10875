"""ResFormer: output shapes in both block modes, the DFE module, the swin/dfe ablations and the size
constraint. Width 8 and 32–64 px inputs keep it fast on a CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.models.resformer import DFE, SIZE_DIVISOR, ResFormer, ResFormerBlock, SwinLayer2d

WIDTH = 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_resformer_outputs_in_both_modes(mode: str):
    torch.manual_seed(0)
    net = ResFormer(in_channels=1, num_classes=3, num_slice_classes=4, width=WIDTH, mode=mode)
    seg, cls = net(torch.randn(2, 1, 64, 64))
    assert seg.shape == (2, 3, 64, 64)
    assert cls.shape == (2, 4)
    assert all(level.mode == mode and isinstance(level.swin, SwinLayer2d) for level in net.levels)
    assert [len(level.res) for level in net.levels] == [3, 4, 6, 3]  # ResNet-34 depths


@pytest.mark.parametrize("swin,dfe", [(False, True), (True, False), (False, False)])
def test_resformer_ablations(swin: bool, dfe: bool):
    net = ResFormer(width=WIDTH, swin=swin, dfe=dfe)
    seg, cls = net(torch.randn(2, 1, 32, 32))
    assert seg.shape == (2, 2, 32, 32) and cls.shape == (2, 2)
    assert all((level.swin is not None) == swin for level in net.levels)
    assert all(isinstance(skip, DFE) == dfe for skip in net.skips)


def test_parallel_block_sums_resnet_and_swin():
    torch.manual_seed(0)
    block = ResFormerBlock(8, blocks=1, heads=2, window_size=4, mode="parallel").eval()
    x = torch.randn(1, 8, 8, 8)
    assert torch.allclose(block(x), block.res(x) + block.swin(x), atol=1e-6)
    sequential = ResFormerBlock(8, blocks=1, heads=2, window_size=4, mode="sequential").eval()
    assert torch.allclose(sequential(x), sequential.swin(sequential.res(x)), atol=1e-6)


def test_dfe_keeps_shape_and_uses_rates_6_12_18():
    dfe = DFE(6)
    assert dfe(torch.randn(2, 6, 16, 16)).shape == (2, 6, 16, 16)
    assert [b[0].dilation for b in dfe.branches] == [(6, 6), (12, 12), (18, 18)]


def test_sizes_must_be_multiples_of_the_divisor_and_gradients_flow():
    net = ResFormer(width=WIDTH)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 40, 40))
    assert 96 % SIZE_DIVISOR == 0
    seg, cls = net(torch.randn(2, 1, 32, 96))  # non-square, a multiple of 32 on each side
    assert seg.shape == (2, 2, 32, 96)
    (F.cross_entropy(seg, torch.randint(0, 2, (2, 32, 96))) + F.cross_entropy(cls, torch.tensor([0, 1]))).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_mode_and_head_split_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        ResFormer(width=WIDTH, mode="stacked")
    with pytest.raises(ValueError, match="heads"):
        ResFormer(width=3)
