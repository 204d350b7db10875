"""Reusable :class:`~engine.training.trainer.TrainingTask` implementations: deep-supervised
segmentation and image-level classification. Pipelines configure them; the trainer runs them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from engine.inference.tta import mirrored_class_probabilities
from engine.training.steps import StepOutput, move_to_device


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of every foreground class (NaN where both are empty), for quick validation."""
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        out.append(float(2.0 * (p & r).sum() / denom) if denom else float("nan"))
    return out


class SegmentationTask:
    """Deep-supervised loss on patches; validation Dice per class on whole preprocessed cases with
    ``infer(model, image) -> probabilities`` (a sliding-window predictor)."""

    def __init__(self, loss: nn.Module, num_classes: int,
                 infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 class_names: Sequence[str] | None = None):
        self.loss = loss
        self.num_classes = num_classes
        self.infer = infer
        self.class_names = list(class_names) if class_names else [str(c) for c in range(1, num_classes)]

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> StepOutput:
        batch = move_to_device(batch, device)
        out = model(batch["image"])
        return StepOutput(self.loss(out, batch["label"]), batch_size=int(batch["image"].shape[0]))

    def validation_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        if self.infer is None:
            raise RuntimeError("SegmentationTask needs an infer() callable for validation")
        image, label = torch.as_tensor(batch["image"]), np.asarray(batch["label"])
        if image.ndim == 5:  # a collated batch of one whole case
            image, label = image[0], label[0]
        pred = self.infer(model, image).argmax(0).numpy()
        return {"dice": dice_per_class(pred, label, self.num_classes)}

    def validation_epoch_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        dice = np.array([o["dice"] for o in outputs], dtype=np.float64)
        per_class = np.nanmean(dice, axis=0) if len(dice) else np.full(self.num_classes - 1, np.nan)
        metrics = {f"dice_{n.replace(' ', '_')}": float(v) for n, v in zip(self.class_names, per_class)}
        metrics["dice"] = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0
        return metrics


class ClassificationTask:
    """Cross-entropy-family loss on ``forward(model, batch) -> logits``; validation macro AUC and
    accuracy over all validation cases (gathered, not averaged per batch).

    ``mirror_axes``: validate on the softmax averaged over these mirrorings of every image tensor in
    the batch, as the predictor infers, so the validation AUC (and a best-epoch choice) is the one
    inference will see; the validation loss stays on the batch as it is.
    """

    def __init__(self, loss: nn.Module, forward: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
                 num_classes: int, mirror_axes: Sequence[int] = ()):
        self.loss = loss
        self.forward = forward
        self.num_classes = num_classes
        self.mirror_axes = tuple(mirror_axes)

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> StepOutput:
        batch = move_to_device(batch, device)
        logits = self.forward(model, batch)
        target = batch["target"].view(-1, 1).long()
        acc = float((logits.argmax(1) == target[:, 0]).float().mean())
        return StepOutput(self.loss(logits.float(), target), {"accuracy": acc}, batch_size=int(target.shape[0]))

    def validation_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        batch = move_to_device(batch, device)
        logits = self.forward(model, batch).float()
        target = batch["target"].view(-1, 1).long()
        probs = torch.softmax(logits, 1)
        if self.mirror_axes:
            images = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim == 5]
            probs = mirrored_class_probabilities(
                lambda *xs: self.forward(model, {**batch, **dict(zip(images, xs))}),
                [batch[k] for k in images], self.mirror_axes, plain_logits=logits)
        return {"loss": float(self.loss(logits, target)), "probs": probs.cpu().numpy().tolist(),
                "target": target[:, 0].cpu().numpy().tolist()}

    def validation_epoch_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        from engine.metrics.classification import one_vs_rest_auc

        probs = np.array([p for o in outputs for p in o["probs"]], dtype=np.float64)
        target = np.array([t for o in outputs for t in o["target"]], dtype=np.int64)
        return {"loss": float(np.mean([o["loss"] for o in outputs])),
                "accuracy": float((probs.argmax(1) == target).mean()) if len(target) else float("nan"),
                "auc": one_vs_rest_auc(target, probs)[1].auc if len(target) else float("nan")}
