"""The command-line options ``engine train --task pet`` adds, and the options object they make."""

from __future__ import annotations

import argparse
from typing import Any

from engine.tasks.pet.options import PetTrainOptions


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("PET outcome (multi-task, multi-scale) training")
    g.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default 40)")
    g.add_argument("--batch-size", type=int, help="crops per step (default 4)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    g.add_argument("--width", type=int, help="channels of the first encoder level, doubled per level (default 4)")
    g.add_argument("--crop-size", type=int, help="side of the cubic crop in 2 mm voxels (multiple of 16; default 48)")
    g.add_argument("--lambda", dest="outcome_weight", type=float, help="outcome loss weight λ (paper's best: 0.3)")
    g.add_argument("--alpha", dest="recon_weight", type=float,
                   help="reconstruction and segmentation loss weight α = β (default 1)")
    g.add_argument("--omega", dest="class_weight", type=float, help="pathology loss weight ω (default 1)")
    g.add_argument("--teacher-forcing", type=float,
                   help="share of batches whose tumour features come from the reference label (default 0.5)")
    g.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop training after this many minutes and keep the best weights so far")
    g.add_argument("--val-fraction", type=float, help="share of cases held out for validation (default 0.1)")
    g.add_argument("--num-workers", type=int, help="data-loading worker processes (default 0)")
    g.add_argument("--single-task", action="store_true",
                   help="ablation: the outcome predictor alone on the encoder's multi-scale features")
    g.add_argument("--no-multiscale", action="store_true",
                   help="ablation: outcome from the segmentation-derived tumour features only")
    g.add_argument("--no-reconstruction", action="store_true", help="ablation: no image-reconstruction decoder")
    g.add_argument("--float32-weights", action="store_true",
                   help="store the weights in float32 (default: float16, half the size)")


def train_options(args: argparse.Namespace) -> PetTrainOptions:
    """The options a parsed ``engine train --task pet`` command line asks for."""
    from engine.registry import DEMO_INTENDED_USE

    passed = ("epochs", "steps_per_epoch", "batch_size", "lr", "width", "crop_size", "outcome_weight",
              "class_weight", "teacher_forcing", "val_fraction", "num_workers", "seed", "device", "model_id",
              "version")
    kw: dict[str, Any] = {k: getattr(args, k) for k in passed if getattr(args, k, None) is not None}
    if getattr(args, "recon_weight", None) is not None:
        kw.update(recon_weight=args.recon_weight, seg_weight=args.recon_weight)  # the paper's α = β
    if args.time_limit is not None:
        kw["time_limit_min"] = args.time_limit
    if args.demo:
        kw["intended_use"] = DEMO_INTENDED_USE
    return PetTrainOptions(single_task=args.single_task, multi_scale=not args.no_multiscale,
                           reconstruction=not args.no_reconstruction, weights_float16=not args.float32_weights, **kw)
