"""The end-to-end network learns on NPC phantoms within seconds: both losses fall, λ moves and stays positive."""

from __future__ import annotations

import torch

from engine.data.dataset import RawDataset
from engine.tasks.npc.data import NpcCases, TrainingVolume, npc_plan, prepare
from engine.tasks.npc.networks import NpcNetwork, network_config
from engine.tasks.npc.training import MultiTaskStep, NpcTrainingModel


def test_a_few_steps_on_two_phantoms_lower_both_losses(npc_phantoms):
    torch.manual_seed(0)
    ds = RawDataset.load(npc_phantoms)
    plan = npc_plan(ds, spacing=(6.0, 3.28, 3.28))
    volumes = []
    for i, case in enumerate(ds.training[:2]):
        image = case.load_image()
        prepared = prepare(plan, image, case.load_label(reference=image))
        volumes.append(TrainingVolume(case.case_id, prepared.image, prepared.label, i))
    config = plan.configuration("3d_fullres")
    network = NpcNetwork(network_config(config.patch_size, config.spacing, 8, 16, 8, 4))
    model = NpcTrainingModel(network, learned_weights=True).train()
    step = MultiTaskStep(NpcCases(volumes, train=False), None)
    batch = torch.utils.data.default_collate([step.data[0], step.data[1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        out = step.training_step(model, batch, torch.device("cpu"))
        out.loss.backward()
        optimizer.step()
        history.append(out.metrics)
    last = {k: sum(h[k] for h in history[-5:]) / 5 for k in ("seg_loss", "cls_loss")}  # dropout makes steps noisy
    assert last["seg_loss"] < 0.85 * history[0]["seg_loss"]
    assert last["cls_loss"] < 0.7 * history[0]["cls_loss"]
    weights = model.loss_weights.weights
    assert all(0 < w != 1.0 for w in weights.values())
