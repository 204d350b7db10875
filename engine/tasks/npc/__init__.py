"""NPCStaging: nasopharyngeal carcinoma on contrast-enhanced T1 MRI — GTV segmentation and T-stage by one
end-to-end network (3D U-Net → probability map × image → 3D Bottleneck Transformer, fused by the
feature-fusion-aware module).

This file declares the task and maps its entry points to the modules that implement them; it
imports no network library, so listing tasks and models stays light.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.tasks.base import (
    T_STAGES,
    CancelFn,
    FieldOfView,
    Label,
    PlanDefaults,
    ProgressFn,
    Task,
    check_tta,
    neoplasm,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.pipelines.case import RunResult
    from engine.registry import ModelBundle
    from engine.tasks.npc.predictor import NpcPredictor

TUMOUR = "GTV"


class NpcTask(Task):
    """Training end to end, Segment & Stage with Grad-CAM, evaluation with model comparison."""

    def add_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        if command == "train":
            from engine.tasks.npc.cli import add_train_arguments

            add_train_arguments(parser)
        elif command == "evaluate":
            from engine.tasks.npc.cli import add_evaluate_arguments

            add_evaluate_arguments(parser)

    def options_from_args(self, command: str, args: argparse.Namespace) -> dict[str, Any]:
        if command == "train":
            from engine.tasks.npc.cli import train_options

            return train_options(args)
        if command == "evaluate" and getattr(args, "compare_to", None):
            return {"compare_to": args.compare_to}
        return {}

    def train(self, dataset: str | Path, out_dir: str | Path, *, plan: Any = None,
              callbacks: Sequence[Any] = (), overwrite: bool = False, command: str | None = None,
              resume: bool = False, **options: Any) -> ModelBundle:
        from engine.tasks.npc.training import train

        return train(dataset, out_dir, options.get("options"), plan=plan, spacing=options.get("spacing"),
                     callbacks=list(callbacks), cancel=options.get("cancel"), overwrite=overwrite, command=command,
                     resume=resume, weights_dtype=options.get("weights_dtype"))

    def load_predictor(self, model: Any = None, device: str = "auto") -> NpcPredictor:
        from engine.pipelines.case import load_model
        from engine.tasks.npc.predictor import NpcPredictor

        if isinstance(model, NpcPredictor):
            return model
        return NpcPredictor(load_model(self.name, model), device)

    def segment(self, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, series_uid: str | None = None, tta: str = "all",
                **options: Any) -> RunResult:
        from engine.tasks.npc.segment import segment_and_stage

        check_tta(tta)  # one forward pass of the whole head crop: nothing is mirrored
        return segment_and_stage(self, source, out_dir, model, device=device, gradcam=gradcam, overwrite=overwrite,
                                 progress=progress, cancel=cancel, series_uid=series_uid)

    def evaluate(self, dataset: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 cancel: CancelFn | None = None, tta: str = "all", **options: Any) -> dict[str, Path]:
        from engine.tasks.npc.evaluation import evaluate

        check_tta(tta)
        return evaluate(dataset, out_dir, model, device=device, overwrite=overwrite, progress=progress,
                        cancel=cancel, compare_to=options.get("compare_to"), cases=options.get("cases"))


TASK = NpcTask(
    name="npc",
    title="Nasopharyngeal carcinoma GTV segmentation and T-staging on MRI",
    modality="MR",
    labels=(Label(TUMOUR, 1, (230, 41, 41), neoplasm()),),
    stage_names=T_STAGES,
    tumour_label=TUMOUR,
    # the paper resamples to 0.4688 × 0.4688 × 6 mm and crops 21 × 224 × 224 (z first here); the crop is
    # the same 126 × 105 × 105 mm at any other spacing a plan chooses
    plan_defaults=PlanDefaults(dims=3, target_spacing=(6.0, 0.4688, 0.4688), patch_size=(21, 224, 224)),
    phantom="engine.synth.npc",
    slicer_module="NPCStaging",
    summary="3D U-Net GTV + 3D Bottleneck Transformer T1-T4 with feature fusion, one end-to-end network, "
            "learned loss weights, Grad-CAM; trains and runs",
    # the nasopharynx with the skull base above and the parapharyngeal spaces beside it (the paper: 105 mm)
    field_of_view=FieldOfView(min_extent_mm=(60.0, 100.0, 100.0), max_spacing_mm=(8.0, 2.0, 2.0),
                              min_spacing_mm=(0.1, 0.1, 0.1), region="the nasopharynx and the skull base"),
)
