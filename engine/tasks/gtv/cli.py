"""The command-line options ``engine train --task gtv`` adds, and the options object they make."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from engine.tasks.gtv.options import ARCHITECTURES, BALANCE_RATIOS, DEFAULT_THRESHOLD, GtvTrainOptions

log = logging.getLogger(__name__)
HCF_SWITCHES = ("no_classifier", "no_sam", "no_ppm", "no_cr_loss")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("GTVSeg (HCF: slice classifier + SANet) training")
    g.add_argument("--architecture", choices=ARCHITECTURES, default="hcf",
                   help="hcf: slice classifier then SANet (the paper's cascade); resformer: one multi-task "
                        "network with segmentation and slice-classification heads")
    g.add_argument("--classifier-epochs", type=int, help="epochs of the slice-classifier phase (default 120)")
    g.add_argument("--segmenter-epochs", type=int, help="epochs of the segmentation phase (default 120)")
    g.add_argument("--classifier-ratio", choices=BALANCE_RATIOS, default="1:1",
                   help="Balance-Sampling ratio abnormal:normal slices of the classifier (default 1:1)")
    g.add_argument("--segmenter-ratio", choices=BALANCE_RATIOS, default="1:1",
                   help="Balance-Sampling ratio of the segmenter ('abnormal': GTV slices only; default 1:1)")
    g.add_argument("--batch-size", type=int, help="segmenter batch size (default 16; the classifier's is twice)")
    g.add_argument("--steps-per-epoch", type=int, help="cap the iterations of an epoch (default: one pass "
                   "over the balanced slice sample)")
    g.add_argument("--width", type=int, help="channels of the first network stage (default 64; e.g. 16 on CPU)")
    g.add_argument("--image-size", type=int,
                   help="in-plane size slices are resized to (multiple of 32; default: planned from the data, "
                        "at most 512 and at most 2x the native resolution)")
    g.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="classifier probability from which a slice is segmented (default 0.5)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 30)")
    g.add_argument("--time-limit", type=float, metavar="MIN",
                   help="stop training after this many minutes (the classifier gets a third) and keep the best "
                        "weights so far")
    g.add_argument("--split", metavar="FILE",
                   help="fixed split JSON {'train': [...], 'val': [...]} of case ids (e.g. "
                        "engine/tasks/gtv/openkbp_split.json); overrides --fold")
    g.add_argument("--no-augmentation", action="store_true", help="train without online augmentation")
    g.add_argument("--num-workers", type=int, help="data-loading worker processes (default 0)")
    g.add_argument("--no-classifier", action="store_true",
                   help="ablation: no slice classifier; SANet trains on all slices (natural ratio) and segments "
                        "every slice")
    g.add_argument("--no-sam", action="store_true", help="ablation: SANet without spatial alignment modules")
    g.add_argument("--no-ppm", action="store_true", help="ablation: SANet without the pyramid pooling module")
    g.add_argument("--no-cr-loss", action="store_true", help="ablation: plain Dice + cross-entropy loss")


def train_options(args: argparse.Namespace) -> GtvTrainOptions:
    """The options a parsed ``engine train --task gtv`` command line asks for."""
    from engine.registry import DEMO_INTENDED_USE

    kw: dict[str, Any] = {}
    for phase in ("classifier_epochs", "segmenter_epochs"):
        value = getattr(args, phase) if getattr(args, phase) is not None else args.epochs
        if value is not None:
            kw[phase] = value
    if args.batch_size:
        kw.update(segmenter_batch_size=args.batch_size, classifier_batch_size=2 * args.batch_size)
    passed = {"steps_per_epoch": "steps_per_epoch", "width": "width", "image_size": "image_size",
              "patience": "patience", "time_limit": "time_limit_min", "split": "split", "seed": "seed",
              "device": "device", "num_workers": "num_workers", "folds": "folds", "model_id": "model_id",
              "version": "version"}
    kw.update({dest: getattr(args, src) for src, dest in passed.items() if getattr(args, src, None) is not None})
    ignored = [f"--{n.replace('_', '-')}" for n in HCF_SWITCHES if getattr(args, n)]
    if args.architecture == "resformer" and ignored:
        log.warning("%s switch(es) off parts of HCF; ResFormer ignores them.", ", ".join(ignored))
    if args.architecture == "resformer" and not args.model_id:
        kw.update(model_id="gtv-resformer", model_name="GTV segmentation (ResFormer)")
    if args.demo:
        kw["intended_use"] = DEMO_INTENDED_USE
    return GtvTrainOptions(
        architecture=args.architecture, classifier_ratio=args.classifier_ratio,
        segmenter_ratio=args.segmenter_ratio, threshold=args.threshold,
        fold=None if args.fold == "all" else int(args.fold), augment=not args.no_augmentation,
        use_classifier=not args.no_classifier, use_sam=not args.no_sam, use_ppm=not args.no_ppm,
        cr_loss=not args.no_cr_loss, **kw)
