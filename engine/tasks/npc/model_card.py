"""The model card (MODEL_CARD.md) of an NPC bundle: method, data, budget, command, validation, λ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.data.dataset import DatasetDescription
from engine.metrics.common import format_number
from engine.planning.planner import Plan
from engine.registry import DEMO_INTENDED_USE
from engine.tasks.npc.options import NpcTrainOptions

METHOD_LINE = ("Method: one end-to-end network (multi-task GTV segmentation and T-staging of nasopharyngeal "
               "carcinoma on contrast-enhanced T1 MRI): a 3D U-Net segments the GTV (sigmoid); its probability map "
               "× the image feeds a 3D Bottleneck Transformer (ResNet-50 whose last three bottleneck blocks use "
               "4-head self-attention with relative position encoding); a feature-fusion-aware module (convolution "
               "+ 4-head self-attention with a position term) fuses the deepest segmentation features with the "
               "staging features before the T1–T4 classifier; loss λseg·(Jaccard + focal) + λcls·CE with λ learned "
               "(homoscedastic uncertainty).")


def validation_lines(metrics: Mapping[str, Any]) -> list[str]:
    val = metrics.get("validation") or {}
    if not val:
        return ["- Validation: none (trained on every case); see the evaluation on separate data."]
    shown = ", ".join(f"{k} {format_number(v)}" for k, v in val.items() if isinstance(v, (int, float)))
    where = f"kept epoch {metrics.get('kept_epoch')} of {metrics.get('epochs')}"
    return [(f"- Validation fold at the {where}: {shown} (Dice at threshold 0.5 on the head crop; AUC macro "
             "one-vs-rest).")]


def budget_line(options: NpcTrainOptions, metrics: Mapping[str, Any], training: Mapping[str, Any]) -> str:
    steps = f" of {options.steps_per_epoch} steps" if options.steps_per_epoch else ""
    limit = f", time limit {options.time_limit_min:g} min" if options.time_limit_min else ""
    device = training.get("hardware", {}).get("device")
    return (f"- Budget: at most {options.epochs} epochs{steps}, batch {options.batch_size}, Adam {options.lr:g}, "
            f"ReduceLROnPlateau (patience {options.plateau_patience}){limit}; ran {metrics.get('epochs')} epoch(s) "
            f"in {training.get('duration_s')} s on {device}.")


def model_card(options: NpcTrainOptions, description: DatasetDescription, metrics: Mapping[str, Any],
               training: Mapping[str, Any], plan: Plan) -> str:
    """The bundle's MODEL_CARD.md as training writes it (a shipped model's card may add measured results)."""
    demo = options.intended_use == DEMO_INTENDED_USE
    config = plan.configuration("3d_fullres")
    data = training.get("data", {})
    weights = metrics.get("loss_weights") or {}
    split = (f"{len(data.get('train_cases', []))} training and {len(data.get('val_cases', []))} validation cases "
             f"(fold {options.fold} of {options.folds}, stratified by stage).")
    phantoms = " It has never seen a real MRI." if demo else ""
    spacing = " × ".join(format_number(s, ".4g") for s in config.spacing)
    crop = " × ".join(str(n) for n in config.patch_size)
    lines = [
        f"# {options.model_name}", "",
        ("- Task: GTV segmentation and T-stage (T1–T4) of nasopharyngeal carcinoma on contrast-enhanced T1 MRI "
         f"(variant `{options.variant}`)."),
        f"- Training data: `{description.name}`, {split} {description.description or ''}".rstrip(),
        f"- Intended use: {options.intended_use}.{phantoms}",
        "- Not a medical device. Do not use for diagnosis or treatment decisions.",
        f"- Input: resampled to {spacing} mm (z, y, x), z-score over the body, head crop {crop} voxels.",
        (f"- Widths: U-Net {options.unet_width} (max {options.unet_max_width}), ResNet-50 {options.stage_width} "
         "(the paper: 32 and 64)."),
        budget_line(options, metrics, training),
        (f"- Learned loss weights at the end: λseg {format_number(weights.get('seg'))}, λcls "
         f"{format_number(weights.get('cls'))} (per epoch in model.json, training.loss_weight_trajectory)."),
        *validation_lines(metrics),
        f"- Training command: `{training.get('command')}`", "",
        METHOD_LINE, ""]
    return "\n".join(lines)
