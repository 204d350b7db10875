"""The command-line options ``engine train --task esophagus`` adds, and the options object they make."""

from __future__ import annotations

import argparse

from engine.tasks.esophagus.options import CLASSIFIER_CHECKPOINTS, TrainOptions
from engine.utils.cliargs import non_negative_int, positive_int

SEGMENTATION_LOSSES = ("focal", "focal+dice")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("EsophagusStaging (nn-TransEC) training")
    g.add_argument("--lowres-epochs", type=non_negative_int, help="epochs of the low-resolution segmentation phase")
    g.add_argument("--fullres-epochs", type=non_negative_int, help="epochs of the full-resolution segmentation phase")
    g.add_argument("--classifier-epochs", type=positive_int, help="epochs of the stage-classification phase")
    g.add_argument("--classifier-checkpoint", choices=CLASSIFIER_CHECKPOINTS,
                   help="classifier to keep: the last epoch's (default) or the one with the best validation "
                        "macro AUC (needs --fold N)")
    g.add_argument("--steps-per-epoch", type=positive_int, help="segmentation iterations per epoch (default 50)")
    g.add_argument("--batch-size", type=positive_int, help="segmentation batch size (default: the plan's)")
    g.add_argument("--num-workers", type=non_negative_int,
                   help="data-loading worker processes (default 0: load in the training process; on a GPU "
                        "machine a few workers keep the GPU fed)")
    g.add_argument("--val-every", type=positive_int, help="validate every N epochs (default 5)")
    g.add_argument("--base-features", type=positive_int, help="channels of the first stage (plan default 32)")
    g.add_argument("--max-features", type=positive_int, help="channel cap (plan default 320)")
    g.add_argument("--seg-loss", choices=SEGMENTATION_LOSSES,
                   help="segmentation loss: 'focal' is the paper's; default 'focal+dice'")
    g.add_argument("--perturb-prior", action="store_true",
                   help="train the full-resolution stage on randomly perturbed low-resolution priors "
                        "(nnU-Net's cascade augmentation; measured without gain on phantoms, off by default)")
    g.add_argument("--no-krt", action="store_true", help="ablation: classify the whole volume, no KRT crop")
    g.add_argument("--no-attention", action="store_true", help="ablation: no cross-task attention gates")
    g.add_argument("--no-transfer", action="store_true", help="ablation: classifier encoder from random weights")
    g.add_argument("--direct-3d", action="store_true",
                   help="ablation: plain 3D classification of the whole volume (no KRT, attention or transfer)")
    g.add_argument("--segmentation-from", metavar="MODEL",
                   help="start from this model's plan and segmentation networks and keep them as they are "
                        "(ablations, new stage labels); --lowres-epochs/--fullres-epochs N fine-tune them "
                        "instead (both > 0: intensity normalisation re-planned on --data); the classifier "
                        "is always trained anew (--epochs sets only its epochs here)")


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The ``TrainOptions`` a parsed ``engine train --task esophagus`` command line asks for."""
    from engine.registry import DEMO_INTENDED_USE

    per_phase = {k: args.epochs if getattr(args, k) is None else getattr(args, k)
                 for k in ("lowres_epochs", "fullres_epochs", "classifier_epochs")}
    if args.segmentation_from:  # take the segmentation as it is unless asked to fine-tune
        per_phase.update({k: 0 for k in ("lowres_epochs", "fullres_epochs") if getattr(args, k) is None})
    passed = ("steps_per_epoch", "batch_size", "base_features", "max_features", "seed", "device", "folds",
              "seg_loss", "val_every", "segmentation_from", "num_workers", "classifier_checkpoint")
    return TrainOptions(
        **{k: v for k, v in per_phase.items() if v is not None},
        **{k: getattr(args, k) for k in passed if getattr(args, k) is not None},
        fold=None if args.fold == "all" else int(args.fold),
        krt=not args.no_krt, attention=not args.no_attention, transfer=not args.no_transfer,
        direct_3d=args.direct_3d, perturb_prior=args.perturb_prior,
        **({"model_id": args.model_id} if args.model_id else {}),
        **({"version": args.version} if args.version else {}),
        **({"intended_use": DEMO_INTENDED_USE} if args.demo else {}))
