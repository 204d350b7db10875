"""The model card (MODEL_CARD.md) of a GTV bundle: data and its licence, command, budget, validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.data.dataset import DatasetDescription
from engine.metrics.common import format_number
from engine.registry import DEMO_INTENDED_USE
from engine.tasks.gtv.options import GtvTrainOptions

METHOD_LINE = ("Method: a heterogeneous cascade framework (HCF: ResNet-18 slice classifier, then the multi-level "
               "Spatial Alignment Network SANet on the slices it keeps) with the Combined Regularization loss and "
               "the Balance-Sampling Strategy (Shi et al., decoupled GTV segmentation on CT).")
RESFORMER_LINE = ("Method: ResFormer, one multi-task network (ResNet-34 encoder with Swin blocks and dilated feature "
                  "enhancement skips) with a segmentation head and a slice-classification head that gates it.")
OPENKBP_LICENCE = ("OpenKBP challenge data (Babier et al., Med Phys 2021; repository licensed MIT), derived from "
                   "TCIA head-and-neck collections under their TCIA data-use terms. The GTV label here is the "
                   "clinical PTV chosen at conversion, a dose target around the gross tumour, not a GTV contour; "
                   "OpenKBP organ contours overwrite the PTV where they overlap.")


def data_lines(description: DatasetDescription, training: Mapping[str, Any]) -> list[str]:
    data = training.get("data", {})
    lines = [f"- Training data: `{description.name}`, {len(data.get('train_cases', []))} training and "
             f"{len(data.get('val_cases', []))} validation cases ({data.get('train_slices')} training slices, "
             f"{data.get('train_abnormal_slices')} with GTV)" + (f"; split `{data['split']}`" if data.get("split") else "")
             + "."]
    extra = description.extra or {}
    if "openkbp" in (description.name + description.description).lower():
        gtv_from = extra.get("gtv_from")
        lines.append(f"- Source images and licence: {OPENKBP_LICENCE}" + (f" Label source: {gtv_from}." if gtv_from else ""))
    elif description.description:
        lines.append(f"- Data description: {description.description}")
    return lines


def metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    rows = []
    for phase, m in metrics.items():
        if not isinstance(m, Mapping):
            continue
        vals = ", ".join(f"{k[len('val_'):]} {format_number(v)}" for k, v in m.items()
                         if k.startswith("val_") and isinstance(v, (int, float)))
        rows.append(f"| {phase} | {m.get('epochs')} | {m.get('best_epoch')} | {vals or 'no validation'} | "
                    f"{m.get('seconds')} | {m.get('seconds_per_iteration')} |")
    if not rows:
        return []
    return ["## Training phases (validation at the best epoch)", "",
            "| phase | epochs | best epoch | validation | seconds | s/iteration |", "|---|---|---|---|---|---|",
            *rows, ""]


def model_card(options: GtvTrainOptions, description: DatasetDescription, metrics: Mapping[str, Any],
               training: Mapping[str, Any], plan: Mapping[str, Any]) -> str:
    """The bundle's MODEL_CARD.md."""
    demo = options.intended_use == DEMO_INTENDED_USE
    lines = [f"# {options.model_name}", "",
             f"- Task: gross tumour volume (GTV) segmentation on CT, 2D slice by slice (variant `{options.variant}`).",
             *data_lines(description, training),
             f"- Intended use: {options.intended_use}." + (" Trained on synthetic phantoms." if demo else ""),
             "- Not a medical device. Do not use for diagnosis or treatment decisions.",
             (f"- Slices: body crop resized to {plan.get('image_size')}² (median body box "
              f"{format_number(plan.get('native_box_size'), '.0f')} px), HU clip {plan.get('clip')}, z-score; "
              f"slices with classifier probability ≥ {plan.get('threshold')} are segmented."),
             f"- Budget: classifier {options.classifier_epochs} and segmenter {options.segmenter_epochs} epochs at most "
             f"(early stopping patience {options.patience}), ratios {options.classifier_ratio} / "
             f"{options.segmenter_ratio}, width {options.width}, batch {options.classifier_batch_size} / "
             f"{options.segmenter_batch_size}"
             + (f", time limit {options.time_limit_min} min" if options.time_limit_min else "")
             + f"; trained for {training.get('duration_s')} s on {training.get('hardware', {}).get('device')}.",
             f"- Training command: `{training.get('command')}`", ""]
    lines += metric_lines(metrics)
    method = RESFORMER_LINE if options.architecture == "resformer" else METHOD_LINE
    return "\n".join(lines + [method]) + "\n"
