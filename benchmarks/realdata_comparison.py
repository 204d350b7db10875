#!/usr/bin/env python
"""Real-data check: our segmentation network against an nnU-Net-default DynUNet on OpenKBP CTs.

Both sides get the **same budget** — the same plan (target spacing, patch size and pooling topology by
nnU-Net's rules), epochs × iterations, batch size, patch sampler (a third of the patches centred on a
foreground voxel), augmentation, seed, training cases, and the same sliding-window prediction (overlap
0.5, gaussian blending, no test-time mirroring, no post-processing). They differ in exactly what each
method prescribes, channel widths included: the baseline keeps nnU-Net's 32 → 320 unless
``--baseline-features`` says otherwise, because nnU-Net's SGD recipe does not leave its all-background
start at narrow widths (8 → 64 stays there for 1,000 iterations where nnU-Net's widths start within 150;
docs/results.md), so narrowing it would compare against a recipe nnU-Net never runs.

- **ours**: the residual encoder–decoder of nn-MTNet (the segmentation network ``engine train`` builds),
  deep-supervised focal + Dice loss with equal weights, Adam 1e-3 with cosine decay — the training
  settings of ``engine train``'s segmentation phases;
- **baseline**: MONAI ``DynUNet`` as nnU-Net v2 configures its 3d_fullres U-Net — plain (non-residual)
  double-conv blocks, instance norm, LeakyReLU 0.01, deep supervision weighted 1, ½, ¼, …; Dice + CE
  loss (batch Dice, no background); SGD 0.01, Nesterov momentum 0.99, weight decay 3e-5, poly decay.

A fixed, seeded part of the cases is held out before anything is fitted; the plan's normalisation is
made on the training cases only. Predictions are restored to each CT's original grid and scored there
per organ (Dice, HD95); a case counts for an organ only when its reference contours that organ.

Outputs in ``--out``: ``results.json`` (settings, hardware, times, per-case scores, summary) and
``results.md`` (the table for docs/results.md). Progress goes to stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared baseline helpers beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_model, save_model  # noqa: E402
from torch import nn  # noqa: E402

from nnunet_baseline import (  # noqa: E402,F401  (re-exported: the tests and older notes use these names)
    NNUNET_FEATURES,
    NNUNET_SGD,
    DeepSupervisionList,
    deep_supervision_outputs,
    dynunet,
    hardware,
    nnunet_loss,
    plan_3d,
)

log = logging.getLogger("realdata_comparison")

METHODS = ("ours", "baseline")
#: Per method in OUT/work/<method>/: trained weights, training wall time (s) summed over resumes, widths.
FINAL_WEIGHTS, TRAIN_TIME, WIDTHS = "final.safetensors", "train_time_s.txt", "features.json"


@dataclass
class Split:
    train: list[str]
    test: list[str]


def holdout_split(case_ids: Sequence[str], fraction: float, seed: int) -> Split:
    """A seeded hold-out: the same cases for every method and every rerun with this seed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--holdout must be between 0 and 1, got {fraction}.")
    ids = sorted(case_ids)
    n_test = max(1, int(round(fraction * len(ids))))
    if n_test >= len(ids):
        raise ValueError(f"{len(ids)} case(s) cannot be split into training and a {fraction:.0%} hold-out.")
    order = np.random.default_rng(seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[:n_test])
    return Split(sorted(set(ids) - set(test)), test)


def build_network(method: str, spec) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``method`` on the shared topology/widths of ``spec`` (an engine NetworkSpec)."""
    from engine.models.nn_mtnet import SegmentationNet

    outputs = deep_supervision_outputs(len(spec.features), spec.deep_supervision)  # full resolution + coarser
    if method == "ours":
        net: nn.Module = SegmentationNet(spec)
        desc = {"network": "engine.models.nn_mtnet.SegmentationNet (residual, nn-MTNet segmentation branch)"}
    else:
        net = dynunet(3, spec.in_channels, spec.num_classes, spec.kernel_sizes, spec.strides, spec.features,
                      outputs)
        desc = {"network": "monai.networks.nets.DynUNet (nnU-Net 3d_fullres U-Net)"}
    desc.update(deep_supervision_outputs=outputs, features=list(spec.features),
                kernel_sizes=spec.kernel_sizes, strides=spec.strides,
                parameters=int(sum(p.numel() for p in net.parameters())))
    return net, desc


def check_widths(work: Path, method: str, features: Sequence[int]) -> None:
    """Refuse to resume or reuse a training made with other channel widths (train_method records them)."""
    record = work / WIDTHS  # written by train_method; absent for runs made before it was
    if record.is_file() and (earlier := json.loads(record.read_text(encoding="utf-8"))) != list(features):
        flag = "--baseline-features" if method == "baseline" else "--base-features/--max-features"
        raise SystemExit(f"{method} in {work} was trained with widths {earlier}, this command asks for "
                         f"{list(features)}; pass the same {flag} or --overwrite to start over.")


def engine_trainer_config(args: argparse.Namespace, work: Path, batch: int):
    """The trainer settings ``engine train`` gives a segmentation phase (optimiser, schedule, gradient
    clipping), taken from the pipeline itself so that "ours" cannot drift from what users train."""
    from engine.tasks.esophagus.options import TrainOptions
    from engine.tasks.esophagus.training import trainer_config

    options = TrainOptions(seed=args.seed, device=args.device, val_every=max(1, args.epochs),
                           num_workers=args.num_workers)
    return trainer_config(options, work, args.epochs, batch, options.lr, "train_loss", "min",
                           args.steps_per_epoch)


def training_setup(method: str, deep_supervision_outputs: int):
    """Loss, optimizer and schedule each method prescribes; ours keeps ``engine train``'s optimizer and
    schedule (``None``: those of :func:`engine_trainer_config`)."""
    from engine.losses import DeepSupervisionLoss, segmentation_loss
    from engine.tasks.esophagus.options import TrainOptions
    from engine.training.config import OptimizerConfig, SchedulerConfig

    if method == "ours":
        return DeepSupervisionLoss(segmentation_loss(TrainOptions().seg_loss)), None, None
    return (nnunet_loss(deep_supervision_outputs), OptimizerConfig(name="sgd", **NNUNET_SGD),
            SchedulerConfig(name="poly"))


def make_dataset(args: argparse.Namespace, out: Path):
    from engine.data.dataset import RawDataset
    from engine.data.importers import import_openkbp

    target = out / "dataset"
    if (target / "dataset.json").is_file():
        log.info("using the converted dataset in %s", target)
        return RawDataset.load(target)
    log.info("converting OpenKBP cases from %s", args.source)
    return import_openkbp(args.source, target, cases=args.cases)


def plan_on(ds, train_ids: set[str], args: argparse.Namespace):
    """nnU-Net's rules on the training cases only (normalisation statistics included)."""
    return plan_3d(ds, train_ids, "esophagus", args.target_spacing, args.patch, args.batch_size)


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  organs: dict[str, int]) -> dict[str, dict[str, float]]:
    """Dice and HD95 per organ the reference contains (absent organs are not scored)."""
    from engine.metrics.segmentation import dice, hd95

    scores = {}
    for name, value in organs.items():
        r = ref == value
        if not r.any():
            continue
        p = pred == value
        scores[name] = {"dice": dice(p, r), "hd95_mm": hd95(p, r, spacing) if p.any() else math.nan}
    return scores


def summarise(per_case: dict[str, dict[str, dict[str, dict[str, float]]]], organs: Sequence[str]) -> dict:
    """Per organ and method: n, mean/sd Dice, median HD95, paired Wilcoxon on Dice."""
    from engine.metrics.statistics import wilcoxon_test

    summary: dict[str, Any] = {}
    for organ in organs:
        cases = [c for c in per_case["ours"] if organ in per_case["ours"][c]]
        row: dict[str, Any] = {"n": len(cases)}
        for m in METHODS:
            d = np.array([per_case[m][c][organ]["dice"] for c in cases], dtype=np.float64)
            h = np.array([per_case[m][c][organ]["hd95_mm"] for c in cases], dtype=np.float64)
            row[m] = {"dice_mean": float(d.mean()) if d.size else math.nan,
                      "dice_sd": float(d.std(ddof=1)) if d.size > 1 else math.nan,
                      "hd95_median_mm": float(np.nanmedian(h)) if np.isfinite(h).any() else math.nan,
                      "missed": int(np.isnan(h).sum())}
        if len(cases) >= 2:
            a = [per_case["ours"][c][organ]["dice"] for c in cases]
            b = [per_case["baseline"][c][organ]["dice"] for c in cases]
            differ = np.any(np.array(a) != np.array(b))
            row["wilcoxon_p_dice"] = wilcoxon_test(a, b).p_value if differ else 1.0
        summary[organ] = row
    means = {m: float(np.nanmean([summary[o][m]["dice_mean"] for o in organs])) for m in METHODS}
    summary["mean_dice"] = means
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The results table; undefined numbers (an organ never found has no HD95, one case no SD) read "n/a"."""
    from engine.metrics.common import format_number as num

    s, budget, methods = result["summary"], result["budget"], result["methods"]
    n_test, n_train = len(result["split"]["test"]), len(result["split"]["train"])
    lines = [f"Hold-out: {n_test} of {n_test + n_train} cases; budget per method: "
             f"{budget['epochs']} epochs × {budget['steps_per_epoch']} iterations, "
             f"batch {budget['batch_size']}, patch {'×'.join(map(str, budget['patch_size']))} at "
             f"{'×'.join(f'{v:g}' for v in budget['spacing_mm'])} mm, widths ours "
             f"{methods['ours']['features']}, baseline {methods['baseline']['features']}; "
             f"training time ours {result['train_time_s']['ours']:.0f} s, baseline "
             f"{result['train_time_s']['baseline']:.0f} s on {result['hardware']['processor']} "
             f"({result['hardware']['torch_threads']} threads"
             + (f", {result['hardware']['gpu']}" if "gpu" in result["hardware"] else ", no GPU") + ").",
             "",
             "| organ | n | Dice ours | Dice baseline | HD95 ours (mm, median) | HD95 baseline (mm, median) "
             "| missed ours / baseline | Wilcoxon p (Dice) |",
             "|---|---|---|---|---|---|---|---|"]
    for organ in result["organs"]:
        r = s[organ]
        o, b = r["ours"], r["baseline"]
        lines.append(f"| {organ} | {r['n']} | {num(o['dice_mean'], '.3f')} ± {num(o['dice_sd'], '.3f')} | "
                     f"{num(b['dice_mean'], '.3f')} ± {num(b['dice_sd'], '.3f')} | "
                     f"{num(o['hd95_median_mm'], '.1f')} | {num(b['hd95_median_mm'], '.1f')} | "
                     f"{o['missed']} / {b['missed']} | {num(r.get('wilcoxon_p_dice', math.nan), '.3g')} |")
    m = s["mean_dice"]
    lines.append(f"| **mean over organs** | | **{num(m['ours'])}** | **{num(m['baseline'])}** | | | | |")
    return "\n".join(lines) + "\n"


def train_method(method: str, net: nn.Module, desc: dict[str, Any], cases: list, cfg, anisotropic: bool,
                 args: argparse.Namespace, work: Path, class_names: list[str],
                 deadline: float | None) -> bool:
    """Train one method; False when stopped at ``deadline`` (resumable). Wall time adds up over resumes."""
    from engine.data.patches import PatchDataset, nnunet_augmentation
    from engine.training.tasks import SegmentationTask
    from engine.training.trainer import Trainer

    loss, optimizer, scheduler = training_setup(method, desc["deep_supervision_outputs"])
    data = PatchDataset(cases, cfg.patch_size, samples=args.steps_per_epoch * cfg.batch_size,
                        augment=nnunet_augmentation(anisotropic=anisotropic))
    trainer_cfg = replace(engine_trainer_config(args, work, cfg.batch_size), save_best=False)
    if optimizer is not None:
        trainer_cfg = replace(trainer_cfg, optimizer=optimizer, scheduler=scheduler)
    log.info("training %s: %s parameters", method, f"{desc['parameters']:,}")
    work.mkdir(parents=True, exist_ok=True)
    (work / WIDTHS).write_text(json.dumps(desc["features"]))
    started = time.monotonic()
    result = Trainer(net, SegmentationTask(loss, len(class_names) + 1, None, class_names), data, None,
                     trainer_cfg, resume=args.resume,
                     cancel=(lambda: time.monotonic() > deadline) if deadline else None).fit()
    earlier = float((work / TRAIN_TIME).read_text(encoding="utf-8")) if (work / TRAIN_TIME).is_file() else 0.0
    total = earlier + time.monotonic() - started
    (work / TRAIN_TIME).write_text(f"{total:.1f}")
    if result.cancelled:
        return False
    save_model(net, str(work / FINAL_WEIGHTS))  # handles DynUNet's aliased (shared) tensors
    log.info("%s trained in %.0f s", method, total)
    return True


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The whole comparison; None while a method is still untrained (see --methods, --time-limit)."""
    from engine.data.patches import TrainingCase
    from engine.inference.sliding_window import SlidingWindowPredictor
    from engine.metrics.common import json_value
    from engine.models.nn_mtnet import NetworkSpec
    from engine.preprocessing.pipeline import Preprocessor
    from engine.utils.device import select_device

    deadline = time.monotonic() + args.time_limit if args.time_limit else None
    out = Path(args.out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite:  # start over; the converted dataset is kept
        shutil.rmtree(out / "work", ignore_errors=True)
        for name in ("results.json", "results.md"):
            (out / name).unlink(missing_ok=True)
    elif (out / "results.json").exists():
        raise SystemExit(f"{out / 'results.json'} exists; pass --overwrite to replace it.")
    for method in args.methods:
        work = out / "work" / method
        if (work / "checkpoints").exists() and not (work / FINAL_WEIGHTS).is_file() and not args.resume:
            raise SystemExit(f"{method} has an unfinished training in {work}; pass --resume to continue it "
                             "or --overwrite to start over.")
    ds = make_dataset(args, out)
    split = holdout_split([c.case_id for c in ds.training], args.holdout, args.seed)
    plan = plan_on(ds, set(split.train), args)
    cfg = plan.configuration("3d_fullres")
    organs = {k: v for k, v in plan.labels.items() if v > 0}
    log.info("plan: spacing %s, patch %s, batch %d, strides %s", cfg.spacing, cfg.patch_size, cfg.batch_size,
             cfg.network.strides)
    device = select_device(args.device)
    pre = Preprocessor(plan, "3d_fullres")
    by_id = {c.case_id: c for c in ds.training}
    t0 = time.monotonic()
    train_cases = []
    for cid in split.train:
        p = pre(by_id[cid].load_image(), by_id[cid].load_label())
        train_cases.append(TrainingCase(cid, p.image, p.label))
    log.info("preprocessed %d training cases in %.0f s", len(train_cases), time.monotonic() - t0)
    anisotropic = max(cfg.spacing) / min(cfg.spacing) >= 2.0
    specs = {"ours": NetworkSpec.from_topology(cfg.network, 1, len(plan.labels), args.base_features,
                                               args.max_features),
             "baseline": NetworkSpec.from_topology(cfg.network, 1, len(plan.labels), *args.baseline_features)}
    class_names = [plan.label_names[i] for i in range(1, len(plan.labels))]

    networks, descriptions, times, missing = {}, {}, {}, []
    for method in METHODS:
        torch.manual_seed(args.seed)
        np.random.seed(args.seed % 2**32)
        net, descriptions[method] = build_network(method, specs[method])
        work = out / "work" / method
        check_widths(work, method, specs[method].features)
        if (work / FINAL_WEIGHTS).is_file():  # trained by an earlier invocation
            load_model(net, str(work / FINAL_WEIGHTS))
        elif method not in args.methods:
            missing.append(method)
            continue
        elif not train_method(method, net, descriptions[method], train_cases, cfg, anisotropic, args, work,
                              class_names, deadline):
            log.warning("%s: stopped at the time limit; its last complete epoch is checkpointed in %s. "
                        "Run the same command with --resume to continue.", method, work)
            return None
        times[method] = float((work / TRAIN_TIME).read_text(encoding="utf-8"))
        networks[method] = net.eval()
    if missing:
        log.info("trained %s; train %s too (--methods) before scoring.", ", ".join(args.methods),
                 ", ".join(missing))
        return None

    predictor = SlidingWindowPredictor(cfg.patch_size, device, overlap=0.5, sw_batch_size=2)
    per_case: dict[str, dict[str, Any]] = {m: {} for m in METHODS}
    for i, cid in enumerate(split.test):
        image, label = by_id[cid].load_image(), by_id[cid].load_label()
        p = pre(image)
        for method in METHODS:
            labels = predictor(networks[method].to(device), p.image).argmax(0).numpy().astype(np.uint8)
            restored = Preprocessor.restore_labels(labels, p.record)
            per_case[method][cid] = evaluate_case(restored, label.array, image.spacing, organs)
        log.info("scored %d/%d (%s)", i + 1, len(split.test), cid)

    result = {
        "dataset": str(Path(args.source).absolute()) if args.source else str(out / "dataset"),
        "split": {"seed": args.seed, "holdout_fraction": args.holdout,
                  "train": split.train, "test": split.test},
        "budget": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                   "batch_size": cfg.batch_size,
                   "patch_size": cfg.patch_size, "spacing_mm": cfg.spacing,
                   "sliding_window": {"overlap": 0.5, "mode": "gaussian", "mirroring": False}},
        "methods": descriptions, "train_time_s": times, "hardware": hardware(),
        "command": "python benchmarks/realdata_comparison.py " + " ".join(sys.argv[1:]),
        "organs": list(organs), "per_case": per_case, "summary": summarise(per_case, list(organs)),
    }
    (out / "results.json").write_text(json.dumps(json_value(result), indent=1))
    (out / "results.md").write_text(markdown(result))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "openkbp" / "train"),
                   help="OpenKBP folder with pt_N/{ct,labels}.nii.gz (converted into OUT/dataset once)")
    p.add_argument("--out", required=True, help="work and result folder")
    p.add_argument("--cases", type=int, help="use only the first N patients (default: all)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of cases held out for scoring")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, help="default: the plan's")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the plan's")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="default: the plan's")
    p.add_argument("--base-features", type=int,
                   help="first-stage channels of our network (default: the plan's, 32)")
    p.add_argument("--max-features", type=int, help="channel cap of our network (default: the plan's, 320)")
    p.add_argument("--baseline-features", type=int, nargs=2, metavar=("BASE", "MAX"),
                   default=list(NNUNET_FEATURES),
                   help="first-stage channels and cap of the baseline (default: nnU-Net's 32 320; its SGD "
                        "recipe does not train at narrow widths such as 8 64)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0,
                   help="patch-loading processes per training (default 0: in the training process); on a GPU "
                        "the augmentation otherwise bounds the speed. Each count is reproducible on its own, "
                        "but different counts draw different patches")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="train only these now (scoring waits until both are trained); default both")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop training once this run has taken this long (keeping the last complete epoch), "
                        "e.g. to fit a per-command time limit; rerun with --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped training from OUT/work/<method>/checkpoints/last")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    result = run(args)
    if result is None:
        return 3  # not finished: a method is untrained or stopped at --time-limit
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
