"""The network learns from PET phantoms: on a fixed batch of tumour-centred crops, a few Adam steps
lower every loss term and raise the tumour Dice (a broken head, loss or data path would not)."""

from __future__ import annotations

import torch

from engine.data.dataset import RawDataset
from engine.synth import generate_dataset
from engine.tasks.pet.data import CentredCrops, load_cases
from engine.tasks.pet.losses import LossWeights, MultiTaskLoss
from engine.tasks.pet.networks import PetMultiTaskNet, PetNetworkSpec

CROP = 32
STEPS = 20


def _dice(logits: torch.Tensor, label: torch.Tensor) -> float:
    pred = logits > 0
    ref = label > 0.5
    return float(2 * (pred & ref).sum() / max(int(pred.sum() + ref.sum()), 1))


def test_a_few_steps_on_phantoms_lower_every_loss_term(tmp_path):
    generate_dataset("pet", tmp_path / "data", cases=2, seed=21, preset="small")
    cases = load_cases(RawDataset.load(tmp_path / "data").training, CROP)
    crops = CentredCrops(cases, CROP, suv_scale=5.0)
    batch = {k: torch.stack([crops[i][k] for i in range(len(crops))]) for k in ("image", "label", "pathology", "outcome")}
    torch.manual_seed(0)
    net = PetMultiTaskNet(PetNetworkSpec(width=2, crop_size=(CROP,) * 3))
    loss = MultiTaskLoss(LossWeights())
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def step() -> tuple[dict[str, float], float]:
        out = net(batch["image"])
        total, terms = loss(out, batch["image"], batch["label"], batch["pathology"], batch["outcome"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return terms, _dice(out.segmentation_logits.detach(), batch["label"])

    first, first_dice = step()
    for _ in range(STEPS):
        last, last_dice = step()
    assert set(first) == {"reconstruction", "segmentation", "pathology", "outcome"}
    for name in first:
        assert last[name] < first[name], (name, first[name], last[name])
    assert last["reconstruction"] < 0.5 * first["reconstruction"]
    assert last_dice > first_dice + 0.2
