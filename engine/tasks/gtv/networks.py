"""The GTV task's networks and losses, built from the architecture record a bundle stores.

The networks themselves live in ``engine.models`` (SANet, the ResNet-18 slice classifier, ResFormer)
and the CR loss in ``engine.losses``; they are imported here, inside functions, so that the task
declaration stays free of network libraries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from engine.tasks.gtv.options import GtvTrainOptions


def architecture_record(options: GtvTrainOptions) -> dict[str, Any]:
    """What the bundle records about the networks: enough to rebuild them, and the ablation switches."""
    width = int(options.width)
    record: dict[str, Any] = {"name": "HCF" if options.architecture == "hcf" else "ResFormer",
                              "architecture": options.architecture, "variant": options.variant,
                              "loss": ("ResFormer (0.25 slice CE + Dice)" if options.architecture == "resformer"
                                       else "CR" if options.cr_loss else "Dice+CE"),
                              "classifier_gate": bool(options.use_classifier)}
    if options.architecture == "resformer":
        record["resformer"] = {"in_channels": 1, "num_classes": 2, "num_slice_classes": 2, "width": width,
                               "swin": True, "dfe": True}
        return record
    record["classifier"] = ({"name": "SliceClassifier", "in_channels": 1, "width": width, "num_classes": 2}
                            if options.use_classifier else None)
    record["segmenter"] = {"name": "SANet", "in_channels": 1, "num_classes": 2, "width": width,
                           "lateral": 2 * width, "use_ppm": bool(options.use_ppm), "use_sam": bool(options.use_sam)}
    return record


def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "name"}


def build_classifier(spec: Mapping[str, Any]) -> nn.Module:
    from engine.models.sanet import SliceClassifier

    return SliceClassifier(**_kwargs(spec))


def build_segmenter(spec: Mapping[str, Any]) -> nn.Module:
    from engine.models.sanet import SANet

    return SANet(**_kwargs(spec))


def build_resformer(spec: Mapping[str, Any]) -> nn.Module:
    from engine.models.resformer import ResFormer

    return ResFormer(**_kwargs(spec))


def gradcam_layer(classifier: nn.Module) -> nn.Module:
    """Where Grad-CAM looks: the slice classifier's last convolution stage, or ResFormer's deepest
    level (its slice head pools the two deepest levels)."""
    layer = getattr(classifier, "last_conv_stage", None)
    if layer is None and hasattr(classifier, "levels"):
        layer = classifier.levels[-1]
    if layer is None:
        raise AttributeError(f"{type(classifier).__name__} has no last_conv_stage for Grad-CAM")
    return layer


def segmentation_loss(cr_loss: bool) -> nn.Module:
    """The paper's CR loss (Dice + (1 − α)·CE + α·uniform regulariser, α = 0.1), or without the
    regulariser plain Dice + CE (the ablation)."""
    from engine.losses.cr_loss import CRLoss

    return CRLoss(alpha=0.1, regulariser=cr_loss)


def resformer_loss() -> nn.Module:
    """ResFormer's multi-task loss: weighted slice cross-entropy + segmentation Dice."""
    from engine.losses.cr_loss import ResFormerLoss

    return ResFormerLoss()


def split_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(segmentation logits, slice logits or None)`` of a network's output (tensor or pair)."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1] if len(out) > 1 else None
    return out, None
