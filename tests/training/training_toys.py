"""Tiny models, data and tasks shared by the training tests and the DDP worker (not a test module)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from engine.training import StepOutput, move_to_device


class ToyDataset(Dataset):
    """Fixed random regression data: the same tensors in every process."""

    def __init__(self, n: int = 16, features: int = 8, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=g)
        w = torch.randn(features, 1, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def toy_net(features: int = 8, hidden: int = 16, dropout: float = 0.3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(features, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers)


class RegressionTask:
    """MSE regression; the batch-mean loss makes DDP gradients equal to a single big batch."""

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        x, y = move_to_device(batch, device)
        pred = model(x)
        loss = torch.nn.functional.mse_loss(pred, y)
        return StepOutput(loss=loss, metrics={"mae": (pred - y).abs().mean().item()}, batch_size=len(x))

    def validation_step(self, model: nn.Module, batch, device: torch.device) -> dict[str, float]:
        x, y = move_to_device(batch, device)
        pred = model(x)
        return {"loss": torch.nn.functional.mse_loss(pred, y).item(), "mae": (pred - y).abs().mean().item()}


class ScriptedTask(RegressionTask):
    """Validation reports a scripted value per epoch, to test early stopping exactly."""

    def __init__(self, values: list[float], key: str = "score") -> None:
        self.values = values
        self.key = key
        self.epoch = 0

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch = epoch

    def validation_epoch_end(self, outputs: list[dict[str, float]]) -> dict[str, float]:
        return {self.key: self.values[self.epoch - 1], "batches": float(len(outputs))}
