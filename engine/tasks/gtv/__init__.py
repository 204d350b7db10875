"""GTVSeg: gross tumour volume on CT, slice by slice — the heterogeneous cascade (HCF) of a slice
classifier and SANet, or the one-network ResFormer.

This file declares the task and maps its entry points to the modules that implement them; it
imports no network library, so listing tasks and models stays light.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.tasks.base import (
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
    from engine.tasks.gtv.predictor import GtvPredictor

TUMOUR = "GTV"
LABELS = (Label(TUMOUR, 1, (230, 41, 41), neoplasm()),)


class GtvTask(Task):
    """HCF training in two phases (or ResFormer in one), Segment with per-slice probabilities, evaluation."""

    def add_arguments(self, command: str, parser: argparse.ArgumentParser) -> None:
        if command == "train":
            from engine.tasks.gtv.cli import add_train_arguments

            add_train_arguments(parser)
        elif command == "evaluate":
            parser.add_argument("--split", metavar="FILE",
                                help="evaluate only the 'val' cases of this split JSON (e.g. the training split)")
        elif command == "run":
            parser.add_argument("--threshold", type=float, default=None,
                                help="slice-classifier probability from which a slice is segmented "
                                     "(default: the model's, 0.5)")

    def options_from_args(self, command: str, args: argparse.Namespace) -> dict[str, Any]:
        if command == "train":
            from engine.tasks.gtv.cli import train_options

            return {"options": train_options(args)}
        if command == "evaluate" and getattr(args, "split", None):
            from engine.tasks.gtv.openkbp import split_cases

            return {"cases": split_cases(args.split, "val")}
        if command == "run" and getattr(args, "threshold", None) is not None:
            return {"threshold": args.threshold}
        return {}

    def train(self, dataset: str | Path, out_dir: str | Path, *, plan: Any = None,
              callbacks: Sequence[Any] = (), overwrite: bool = False, command: str | None = None,
              resume: bool = False, **options: Any) -> ModelBundle:
        from engine.tasks.gtv.training import train

        return train(dataset, out_dir, options.get("options"), plan=plan, callbacks=list(callbacks),
                     cancel=options.get("cancel"), overwrite=overwrite, command=command, resume=resume)

    def load_predictor(self, model: Any = None, device: str = "auto") -> GtvPredictor:
        from engine.pipelines.case import load_model
        from engine.tasks.gtv.predictor import GtvPredictor

        if isinstance(model, GtvPredictor):
            return model
        return GtvPredictor(load_model(self.name, model), device)

    def segment(self, source: Any, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                gradcam: bool = True, overwrite: bool = False, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, series_uid: str | None = None, tta: str = "all",
                **options: Any) -> RunResult:
        from engine.tasks.gtv.segment import segment

        check_tta(tta)  # 2D slices are not mirrored; the generic option is still checked
        return segment(self, source, out_dir, model, device=device, gradcam=gradcam, overwrite=overwrite,
                       progress=progress, cancel=cancel, series_uid=series_uid, threshold=options.get("threshold"))

    def evaluate(self, dataset: str | Path, out_dir: str | Path, model: Any = None, *, device: str = "auto",
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 cancel: CancelFn | None = None, tta: str = "all", **options: Any) -> dict[str, Path]:
        from engine.tasks.gtv.evaluation import evaluate

        check_tta(tta)
        return evaluate(dataset, out_dir, model, device=device, overwrite=overwrite, progress=progress,
                        cancel=cancel, cases=options.get("cases"))


TASK = GtvTask(
    name="gtv",
    title="Gross tumour volume segmentation on CT (slice classifier + SANet)",
    modality="CT",
    labels=LABELS,
    tumour_label=TUMOUR,
    # the paper segments 2D slices resized to 512 × 512 after cropping to the body; the GTV plan
    # lowers that for coarse CTs (never more than 2x the native in-plane size)
    plan_defaults=PlanDefaults(dims=2, patch_size=(512, 512)),
    phantom="engine.synth.gtv",
    slicer_module="GTVSeg",
    summary="HCF: slice classifier + SANet (or ResFormer), 2D slice by slice, per-slice probabilities, "
            "Grad-CAM; trains and runs",
    # a chest or head-and-neck CT: the tumour with the body around it, slices thin enough for a nodule
    field_of_view=FieldOfView(min_extent_mm=(50.0, 150.0, 150.0), max_spacing_mm=(6.0, 5.0, 5.0),
                              min_spacing_mm=(0.1, 0.1, 0.1), region="the tumour with the body around it"),
)
