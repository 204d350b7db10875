"""The command-line options ``engine train|evaluate --task npc`` add, and the options they make."""

from __future__ import annotations

import argparse
from typing import Any

from engine.tasks.npc.options import PAPER_STAGE_WIDTH, PAPER_UNET_WIDTH, NpcTrainOptions

ABLATIONS = ("no_fusion", "fixed_weights", "plain_resnet", "no_gating")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("NPCStaging (3D U-Net + Bottleneck Transformer, end to end) training")
    g.add_argument("--batch-size", type=int, help="cases per step (default 4, the paper's)")
    g.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (default: one pass over the cases)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4)")
    g.add_argument("--plateau-patience", type=int,
                   help="validations without improvement before ReduceLROnPlateau lowers the rate (default 10)")
    g.add_argument("--unet-width", type=int,
                   help=f"U-Net first-stage channels, a multiple of 8 (default {PAPER_UNET_WIDTH}; e.g. 8 on a CPU)")
    g.add_argument("--unet-max-width", type=int, help="U-Net channel cap (default 320)")
    g.add_argument("--stage-width", type=int,
                   help=f"ResNet-50 first-stage channels, a multiple of 8 (default {PAPER_STAGE_WIDTH}; e.g. 8 on a CPU)")
    g.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop after this many minutes and keep the best weights so far")
    g.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    g.add_argument("--num-workers", type=int, help="data-loading worker processes (default 0)")
    g.add_argument("--half-precision-weights", action="store_true",
                   help="store the weights in float16 (half the size; computed in float32)")
    g.add_argument("--no-augmentation", action="store_true", help="train without left-right mirroring and "
                   "intensity jitter")
    g.add_argument("--no-fusion", action="store_true",
                   help="ablation: classify the staging features alone (no feature-fusion-aware module)")
    g.add_argument("--fixed-weights", action="store_true", help="ablation: λseg = λcls = 1, not learned")
    g.add_argument("--plain-resnet", action="store_true",
                   help="ablation: plain 3D ResNet-50 (convolutions in every block) instead of the Bottleneck "
                        "Transformer")
    g.add_argument("--no-gating", action="store_true",
                   help="ablation: the stage branch reads the image, not probability map × image")


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    """The entry point's keyword arguments for a parsed ``engine train --task npc`` command line."""
    from engine.registry import DEMO_INTENDED_USE

    passed = {"epochs": "epochs", "batch_size": "batch_size", "steps_per_epoch": "steps_per_epoch", "lr": "lr",
              "plateau_patience": "plateau_patience", "unet_width": "unet_width", "unet_max_width": "unet_max_width",
              "stage_width": "stage_width", "time_limit": "time_limit_min", "val_every": "val_every",
              "num_workers": "num_workers", "seed": "seed", "device": "device", "folds": "folds",
              "model_id": "model_id", "version": "version"}
    kw: dict[str, Any] = {dest: getattr(args, src) for src, dest in passed.items()
                          if getattr(args, src, None) is not None}
    if args.demo:
        kw["intended_use"] = DEMO_INTENDED_USE
    options = NpcTrainOptions(fold=None if args.fold == "all" else int(args.fold), augment=not args.no_augmentation,
                              fusion=not args.no_fusion, learned_weights=not args.fixed_weights,
                              bot=not args.plain_resnet, gating=not args.no_gating, **kw)
    return {"options": options, "weights_dtype": "float16" if args.half_precision_weights else None}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare-to", metavar="MODEL",
                        help="a second npc model evaluated on the same cases: DeLong (AUC), McNemar (accuracy) and "
                             "Wilcoxon (DSC) tests of the first against it, in comparison.md")
