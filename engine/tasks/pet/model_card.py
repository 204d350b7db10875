"""The model card (MODEL_CARD.md) of a PET outcome bundle: data, budget, command, validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.data.dataset import DatasetDescription
from engine.metrics.common import format_number
from engine.registry import DEMO_INTENDED_USE
from engine.tasks.pet.options import PetTrainOptions

METHOD_LINE = ("Method: multi-task multi-scale outcome prediction from FDG PET (Amyar et al.): a shared 3D encoder "
               "with a reconstruction decoder (MSE) and a tumour-segmentation decoder (Dice), a pathology classifier "
               "(MLP) and an outcome predictor on segmentation-derived tumour features concatenated with globally "
               "pooled encoder features of levels 3-5; loss α·recon + β·seg + ω·class + λ·outcome.")


def model_card(options: PetTrainOptions, description: DatasetDescription, metrics: Mapping[str, Any],
               training: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    """The bundle's MODEL_CARD.md."""
    demo = options.intended_use == DEMO_INTENDED_USE
    metrics = metrics.get("network", {})
    validation = ", ".join(f"{k[len('val_'):]} {format_number(v)}" for k, v in metrics.items()
                           if k.startswith("val_") and isinstance(v, (int, float)))
    lines = [f"# {options.model_name}", "",
             (f"- Task: tumour segmentation, pathology and treatment outcome from FDG PET in SUV "
             f"(variant `{options.variant}`)."),
             f"- Training data: `{description.name}`, {training.get('cases_train')} training and "
             f"{training.get('cases_validation')} validation cases."
             + (f" {description.description}" if description.description else ""),
             f"- Intended use: {options.intended_use}."
             + (" Trained on synthetic PET phantoms only: its figures say nothing about patients." if demo else ""),
             "- Not a medical device. Do not use for diagnosis or treatment decisions.",
             (f"- Input: PET in body-weight SUV, canonical orientation, resampled to "
             f"{' × '.join(str(s) for s in plan.get('target_spacing', []))} mm; crops of "
             f"{' × '.join(str(s) for s in plan.get('crop_size', []))} voxels around the tumour."),
             (f"- Loss weights: α = {options.recon_weight}, β = {options.seg_weight}, ω = {options.class_weight}, "
             f"λ = {options.outcome_weight}; teacher forcing of the tumour features {options.teacher_forcing}."),
             f"- Budget: {options.epochs} epochs × {options.steps_per_epoch} steps of batch {options.batch_size}, "
             f"width {options.width}" + (f", time limit {options.time_limit_min} min" if options.time_limit_min else "")
             + f"; ran {metrics.get('epochs')} epochs in {metrics.get('seconds')} s"
             + (" (stopped by the time limit)" if metrics.get("time_limit_reached") else "") + ".",
             f"- Validation (held-out cases, best epoch {metrics.get('best_epoch')}): {validation or 'none'}.",
             (f"- Tumour threshold {plan.get('segmentation_threshold', 0.5):g}, chosen on the validation cases' "
              f"whole-volume Dice: {metrics.get('val_whole_volume_dice') or 'no validation cases'}."),
             f"- Training command: `{training.get('command')}`", "", METHOD_LINE]
    return "\n".join(lines) + "\n"
