#!/usr/bin/env python
"""GTVSeg against its peers: every method trained for the same wall-clock budget on the same cases with
the same seed, then scored in 3D on every validation patient of a fixed split.

Methods (``--methods``):

- ``hcf``: GTVSeg's heterogeneous cascade (slice classifier, then SANet on the slices it keeps), trained by
  the engine itself (``engine.tasks.get_task("gtv").train``) and run by its predictor;
- ``resformer``: GTVSeg with ``--architecture resformer``;
- ``hcf-no-classifier``, ``hcf-no-sam``, ``hcf-no-ppm``, ``hcf-no-cr``: the ablations of HCF
  (``--no-classifier``, ``--no-sam``, ``--no-ppm``, ``--no-cr-loss``);
- ``dynunet2d``: MONAI ``DynUNet`` 2D with nnU-Net's default choices on the GTV task's own preprocessed
  slices (``engine.tasks.gtv.slices.load_slices``: same plan, body crop, resize, CT window), segmenting
  every slice;
- ``dynunet3d``: MONAI ``DynUNet`` 3D (nnU-Net 3d_fullres) on the volumes, planned and preprocessed by the
  engine's planner and predicted by its sliding window, as ``realdata_comparison.py``'s baseline.

The budget: each method's training process gets ``--budget-min`` minutes of wall time, data loading and
preprocessing included. GTVSeg's methods stop through the engine's ``--time-limit`` (the classifier gets a
third); the DynUNets stop at the budget and decay the learning rate by nnU-Net's poly rule over it. No
method sees a validation patient while training (the engine is given the split's training part only, so
it keeps its last weights instead of selecting an epoch on the patients scored here).

Each method trains in one child process and is scored in another, so the peak resident memory of the
scoring process (``VmHWM`` of ``/proc/self/status``: libraries, model and one scan at a time) is the
method's inference memory, not what an earlier method left behind; on CUDA the peak allocated GPU memory
is recorded as well. Outputs in ``--out``: ``results.json`` and ``results.md``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (REPO, HERE):  # run from a checkout without installing the engine; the shared helpers beside
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np

log = logging.getLogger("gtv_comparison")

HCF_ABLATIONS = {"hcf-no-classifier": "use_classifier", "hcf-no-sam": "use_sam", "hcf-no-ppm": "use_ppm",
                 "hcf-no-cr": "cr_loss"}
METHODS = ("hcf", "resformer", "dynunet2d", "dynunet3d", *HCF_ABLATIONS)
REFERENCE = "hcf"
#: Per method in OUT/work/<method>/: the training record and the scores (the method is finished when present).
TRAINED, SCORES = "trained.json", "scores.json"
TUMOUR = "GTV"
#: Epoch cap handed to the engine: the budget, not an epoch count, ends GTVSeg's training.
UNBOUNDED_EPOCHS = 1_000_000


# ----------------------------------------------------------------------------- measurements


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM of /proc/self/status; the peak
    falls back to ``ru_maxrss`` where /proc is missing), MB."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    if "VmHWM" not in out:
        scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return {"rss_mb": round(out.get("VmRSS", math.nan), 1), "peak_rss_mb": round(out["VmHWM"], 1)}


def score_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """3D Dice and HD95 (mm) of one scan; HD95 is undefined (NaN) when either mask is empty."""
    from engine.metrics.segmentation import dice, hd95

    p, r = pred.astype(bool), ref.astype(bool)
    return {"dice": float(dice(p, r)), "hd95_mm": float(hd95(p, r, spacing)) if p.any() and r.any() else math.nan}


def summarise(scores: dict[str, dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: n, Dice mean/SD/median, HD95 median (missed scans left out, counted), paired Wilcoxon
    of the Dice against HCF's on the same scans, inference time per scan, peak memory, parameters."""
    from engine.metrics.statistics import wilcoxon_test

    summary: dict[str, dict[str, Any]] = {}
    for m in methods:
        per_case = scores[m]["per_case"]
        cases = sorted(per_case)
        d = np.array([per_case[c]["dice"] for c in cases], dtype=np.float64)
        h = np.array([per_case[c]["hd95_mm"] for c in cases], dtype=np.float64)
        t = np.array([per_case[c]["seconds"] for c in cases], dtype=np.float64)
        row: dict[str, Any] = {
            "n": len(cases), "dice_mean": float(d.mean()) if d.size else math.nan,
            "dice_sd": float(d.std(ddof=1)) if d.size > 1 else math.nan,
            "dice_median": float(np.median(d)) if d.size else math.nan,
            "hd95_median_mm": float(np.nanmedian(h)) if np.isfinite(h).any() else math.nan,
            "missed": int(np.isnan(h).sum()),
            "inference_s_mean": float(t.mean()) if t.size else math.nan,
            "inference_s_median": float(np.median(t)) if t.size else math.nan,
            "peak_rss_mb": scores[m]["memory"]["peak_rss_mb"], "parameters": scores[m]["parameters"],
            "train_time_s": scores[m].get("train_time_s", math.nan), "wilcoxon_p_vs_hcf": math.nan}
        if "peak_gpu_mb" in scores[m]:
            row["peak_gpu_mb"] = scores[m]["peak_gpu_mb"]
        if m != REFERENCE and REFERENCE in scores:
            ref = scores[REFERENCE]["per_case"]
            paired = [c for c in cases if c in ref]
            if len(paired) >= 2:
                row["wilcoxon_p_vs_hcf"] = wilcoxon_test([per_case[c]["dice"] for c in paired],
                                                         [ref[c]["dice"] for c in paired]).p_value
        summary[m] = row
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The header (budget, machine, split, command) and one table; undefined numbers read "n/a"."""
    from engine.metrics.common import format_number as num

    hw, split = result["hardware"], result["split"]
    device = hw.get("gpu", "no GPU") if result["device"] != "cpu" else "CPU"
    lines = [
        "# GTVSeg against its peers", "",
        f"- budget: {result['budget_min']:g} min of training wall time per method (data loading included), "
        f"seed {result['seed']}",
        f"- machine: {hw['cpu_count']} CPUs, {hw['torch_threads']} torch thread(s), device {result['device']} "
        f"({device}), torch {hw['torch']}",
        f"- split: {split['file']}: {len(split['train'])} training and {len(split['val'])} validation patients "
        "(every validation patient scored in 3D on its original grid)",
        f"- command: `{result['command']}`", "",
        "| method | params | DSC mean ± SD | DSC median | HD95 median (mm) | missed | p vs HCF (Wilcoxon, DSC) "
        "| inference s/scan (median) | peak memory MB (RSS) | training s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["methods"]:
        r = result["summary"][m]
        lines.append(f"| {m} | {r['parameters']:,} | {num(r['dice_mean'], '.3f')} ± {num(r['dice_sd'], '.3f')} | "
                     f"{num(r['dice_median'], '.3f')} | {num(r['hd95_median_mm'], '.1f')} | {r['missed']} | "
                     f"{num(r['wilcoxon_p_vs_hcf'], '.3g')} | {num(r['inference_s_median'], '.2f')} | "
                     f"{num(r['peak_rss_mb'], '.0f')} | {num(r['train_time_s'], '.0f')} |")
    lines += ["", "DSC and HD95 per scan in 3D; HD95 median over the scans where both masks are non-empty "
              "(\"missed\": scans with an empty prediction or reference). Peak memory: VmHWM of the process that "
              "loaded the model and predicted every validation scan (a fresh process per method). Training s: wall "
              "time of the training process (the budget plus the engine's dataset check and saving the model)."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- data


def load_dataset(path: str | Path):
    from engine.data.dataset import RawDataset

    ds = RawDataset.load(path)
    if TUMOUR not in ds.description.labels:
        raise SystemExit(f"{path} has no '{TUMOUR}' label (labels: {ds.description.labels}).")
    return ds


def read_split(path: str | Path, ds) -> tuple[list[str], list[str]]:
    """The split's training and validation ids that the dataset holds (a split covering more is fine)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = {c.case_id for c in ds.training}
    train = [c for c in data.get("train", []) if c in ids]
    val = [c for c in data.get("val", []) if c in ids]
    if set(train) & set(val):
        raise SystemExit(f"{path}: cases in both parts: {sorted(set(train) & set(val))[:5]}")
    if not train or not val:
        raise SystemExit(f"{path} leaves {len(train)} training and {len(val)} validation case(s) of {len(ids)} in "
                         "the dataset; both parts need at least one.")
    return train, val


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def parameters(*nets) -> int:
    return int(sum(p.numel() for net in nets if net is not None for p in net.parameters()))


# ----------------------------------------------------------------------------- training (child process)


def gtv_options(method: str, args: argparse.Namespace, split_file: Path):
    from engine.tasks.gtv.options import GtvTrainOptions

    kw: dict[str, Any] = {}
    if args.batch_size:
        kw.update(segmenter_batch_size=args.batch_size, classifier_batch_size=2 * args.batch_size)
    if method in HCF_ABLATIONS:
        kw[HCF_ABLATIONS[method]] = False
    return GtvTrainOptions(
        architecture="resformer" if method == "resformer" else "hcf", classifier_epochs=UNBOUNDED_EPOCHS,
        segmenter_epochs=UNBOUNDED_EPOCHS, width=args.width, image_size=args.image_size,
        time_limit_min=args.budget_min, split=str(split_file), seed=args.seed, device=args.device,
        num_workers=args.num_workers, model_id=f"gtv-{method}", **kw)


def train_gtvseg(method: str, args: argparse.Namespace, work: Path, train_ids: list[str]) -> dict[str, Any]:
    """GTVSeg (HCF, an ablation or ResFormer) by the engine's own training, on the training part only."""
    from engine.tasks import get_task

    split_file = work / "train_only_split.json"
    split_file.write_text(json.dumps({"train": train_ids, "val": []}, indent=1), encoding="utf-8")
    options = gtv_options(method, args, split_file)
    bundle = get_task("gtv").train(args.data, work / "model", options=options, overwrite=True,
                                   command=f"gtv_comparison {method}")
    return {"model": str(work / "model"), "variant": options.variant, "metrics": bundle.metrics}


def _nnunet_loop(net, loss_fn, batches, args: argparse.Namespace, deadline: float, started: float, device) -> int:
    """SGD (nnU-Net's settings) with the poly learning rate over the budget's wall time, until the deadline."""
    import torch
    from nnunet_baseline import nnunet_sgd, poly_lr

    net.to(device).train()
    opt = nnunet_sgd(net.parameters())
    steps, span = 0, max(deadline - started, 1e-6)
    for image, label in batches:
        now = time.monotonic()
        if now >= deadline:
            break
        for group in opt.param_groups:
            group["lr"] = poly_lr((now - started) / span)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(image.to(device)), label.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        steps += 1
        if steps % 20 == 0:
            log.info("step %d, loss %.4f, %.0f s left", steps, loss.item(), deadline - time.monotonic())
    return steps


def dynunet2d_network(image_size: int, features: Sequence[int]):
    from nnunet_baseline import deep_supervision_outputs, dynunet, nnunet_2d_topology

    kernels, strides, widths = nnunet_2d_topology(image_size, features)
    outputs = deep_supervision_outputs(len(strides))
    net = dynunet(2, 1, 2, kernels, strides, widths, outputs)
    return net, {"kernels": kernels, "strides": strides, "features": widths, "deep_supervision_outputs": outputs}


def train_dynunet2d(args: argparse.Namespace, work: Path, train_ids: list[str], started: float) -> dict[str, Any]:
    """nnU-Net 2D on the GTV task's slices: a third of each batch forced to GTV slices, the GTV task's
    online augmentation, Dice + CE with deep supervision, SGD with poly decay over the budget."""
    import torch
    from nnunet_baseline import nnunet_loss

    from engine.tasks.gtv.slices import augmentation, load_slices
    from engine.utils.device import select_device

    ds = load_dataset(args.data)
    cases = {c.case_id: c for c in ds.training}
    slices, plan = load_slices([cases[i] for i in train_ids], {"background": 0, TUMOUR: 1}, None, args.image_size,
                               tumour_value=ds.description.labels[TUMOUR], seed=args.seed)
    (work / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1), encoding="utf-8")
    net, desc = dynunet2d_network(plan.image_size, args.dynunet2d_features)
    batch = args.batch_size or 16
    abnormal = np.flatnonzero(slices.abnormal)
    transform = augmentation(plan.image_size)
    rng = np.random.default_rng(args.seed)
    n_fg = max(1, round(batch / 3)) if abnormal.size else 0

    def batches():
        while True:
            idx = np.concatenate([rng.integers(len(slices), size=batch - n_fg),
                                  rng.choice(abnormal, n_fg) if n_fg else np.zeros(0, np.int64)])
            images, labels = [], []
            for k in idx:
                item = {"image": slices.images[k][None].astype(np.float32),
                        "label": slices.labels[k][None].astype(np.float32)}
                transform.set_random_state(seed=int(rng.integers(2**31)))
                item = transform(item)
                images.append(torch.as_tensor(np.asarray(item["image"], dtype=np.float32)))
                labels.append(torch.as_tensor(np.rint(np.asarray(item["label"], dtype=np.float32))))
            yield torch.stack(images), torch.stack(labels).long()

    steps = _nnunet_loop(net, nnunet_loss(desc["deep_supervision_outputs"]), batches(), args,
                         started + 60.0 * args.budget_min, started, select_device(args.device))
    from safetensors.torch import save_model

    save_model(net.cpu(), str(work / "weights.safetensors"))
    return {"steps": steps, "batch_size": batch, "image_size": plan.image_size, **desc}


def dynunet3d_network(plan, features: Sequence[int]):
    """DynUNet 3D on a 3d_fullres plan's topology (realdata_comparison's baseline) and its description."""
    from nnunet_baseline import deep_supervision_outputs, dynunet

    from engine.models.nn_mtnet import NetworkSpec

    cfg = plan.configuration("3d_fullres")
    spec = NetworkSpec.from_topology(cfg.network, 1, len(plan.labels), *features)
    outputs = deep_supervision_outputs(len(spec.features), spec.deep_supervision)
    net = dynunet(3, 1, len(plan.labels), spec.kernel_sizes, spec.strides, spec.features, outputs)
    return net, spec, outputs


def dynunet3d_setup(args: argparse.Namespace, ds, train_ids: list[str]):
    """The 3d_fullres plan on the training cases (nnU-Net's rules by the engine's planner; the task name
    only picks 3D planning without fixed spacing or patch) and the network."""
    from nnunet_baseline import plan_3d

    plan = plan_3d(ds, set(train_ids), "esophagus", args.target_spacing, args.patch_3d, args.batch_size_3d)
    cfg = plan.configuration("3d_fullres")
    net, spec, outputs = dynunet3d_network(plan, args.dynunet3d_features)
    return plan, cfg, net, {"kernels": spec.kernel_sizes, "strides": spec.strides, "features": list(spec.features),
                            "deep_supervision_outputs": outputs, "patch_size": cfg.patch_size,
                            "spacing_mm": cfg.spacing, "batch_size": cfg.batch_size}


def train_dynunet3d(args: argparse.Namespace, work: Path, train_ids: list[str], started: float) -> dict[str, Any]:
    """nnU-Net 3d_fullres: the engine's planner and preprocessing, a third of the patches on foreground,
    nnU-Net's augmentation, Dice + CE with deep supervision, SGD with poly decay over the budget."""
    from nnunet_baseline import nnunet_loss
    from torch.utils.data import DataLoader

    from engine.data.patches import PatchDataset, TrainingCase, nnunet_augmentation
    from engine.preprocessing.pipeline import Preprocessor
    from engine.utils.device import select_device

    ds = load_dataset(args.data)
    plan, cfg, net, desc = dynunet3d_setup(args, ds, train_ids)
    plan.save(work / "plan.json")
    pre = Preprocessor(plan, "3d_fullres")
    by_id = {c.case_id: c for c in ds.training}
    cases = []
    for cid in train_ids:
        p = pre(by_id[cid].load_image(), by_id[cid].load_label())
        cases.append(TrainingCase(cid, p.image, p.label))
        if time.monotonic() >= started + 60.0 * args.budget_min:
            break
    anisotropic = max(cfg.spacing) / min(cfg.spacing) >= 2.0
    data = PatchDataset(cases, cfg.patch_size, samples=10**9, augment=nnunet_augmentation(anisotropic=anisotropic))
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=args.num_workers)

    def batches():
        for batch in loader:
            label = batch["label"]
            yield batch["image"], (label if label.ndim == batch["image"].ndim else label[:, None]).long()

    steps = _nnunet_loop(net, nnunet_loss(desc["deep_supervision_outputs"]), batches(), args,
                         started + 60.0 * args.budget_min, started, select_device(args.device))
    from safetensors.torch import save_model

    save_model(net.cpu(), str(work / "weights.safetensors"))
    return {"steps": steps, "training_cases_preprocessed": len(cases), **desc}


def worker_train(method: str, args: argparse.Namespace, work: Path, train_ids: list[str]) -> None:
    started = time.monotonic()
    seed_everything(args.seed)
    if method == "dynunet2d":
        record = train_dynunet2d(args, work, train_ids, started)
    elif method == "dynunet3d":
        record = train_dynunet3d(args, work, train_ids, started)
    else:
        record = train_gtvseg(method, args, work, train_ids)
    record.update(train_time_s=round(time.monotonic() - started, 1), train_memory=memory_mb())
    (work / TRAINED).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    log.info("%s trained in %.0f s", method, record["train_time_s"])


# ----------------------------------------------------------------------------- scoring (child process)


def predictor_for(method: str, args: argparse.Namespace, work: Path, train_ids: list[str]):
    """``(predict(image) -> label array on the input grid, parameter count)`` of a trained method."""
    import torch
    from safetensors.torch import load_model

    from engine.utils.device import select_device

    device = select_device(args.device)
    if method == "dynunet2d":
        from engine.tasks.gtv.preprocessing import GtvPlan, SlicePreprocessor

        plan = GtvPlan.from_dict(json.loads((work / "plan.json").read_text(encoding="utf-8")))
        net, _ = dynunet2d_network(plan.image_size, args.dynunet2d_features)
        load_model(net, str(work / "weights.safetensors"))
        net = net.to(device).eval()
        pre = SlicePreprocessor(plan)

        @torch.no_grad()
        def predict2d(image):
            x, record = pre(image)
            labels = np.zeros(x.shape, dtype=np.uint8)
            for start in range(0, len(x), 16):
                t = torch.from_numpy(x[start:start + 16][:, None]).to(device)
                labels[start:start + 16] = net(t).argmax(1).cpu().numpy().astype(np.uint8)
            return pre.restore_labels(labels, record)

        return predict2d, parameters(net)
    if method == "dynunet3d":
        from engine.inference.sliding_window import SlidingWindowPredictor
        from engine.planning.planner import Plan
        from engine.preprocessing.pipeline import Preprocessor

        plan = Plan.load(work / "plan.json")
        cfg = plan.configuration("3d_fullres")
        net, _, _ = dynunet3d_network(plan, args.dynunet3d_features)
        load_model(net, str(work / "weights.safetensors"))
        net = net.to(device).eval()
        pre = Preprocessor(plan, "3d_fullres")
        window = SlidingWindowPredictor(cfg.patch_size, device, overlap=0.5, sw_batch_size=2)
        value = plan.labels[TUMOUR]

        def predict3d(image):
            p = pre(image)
            labels = window(net, p.image).argmax(0).numpy().astype(np.uint8)
            return (Preprocessor.restore_labels(labels, p.record) == value).astype(np.uint8)

        return predict3d, parameters(net)
    from engine.tasks import get_task

    predictor = get_task("gtv").load_predictor(str(work / "model"), args.device)

    def predict_gtvseg(image):
        return predictor.predict(image, gradcam=False).labels.array

    return predict_gtvseg, parameters(predictor.classifier, predictor.segmenter, predictor.resformer)


def worker_score(method: str, args: argparse.Namespace, work: Path, train_ids: list[str],
                 val_ids: list[str]) -> None:
    import torch

    seed_everything(args.seed)
    base = memory_mb()
    predict, n_params = predictor_for(method, args, work, train_ids)
    ds = load_dataset(args.data)
    value = ds.description.labels[TUMOUR]
    by_id = {c.case_id: c for c in ds.training}
    if torch.cuda.is_available() and args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    per_case = {}
    for i, cid in enumerate(val_ids):
        image = by_id[cid].load_image()
        ref = by_id[cid].load_label(reference=image).array == value
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = predict(image)
        seconds = time.perf_counter() - t0
        per_case[cid] = {**score_case(pred, ref, image.spacing), "seconds": round(seconds, 4)}
        log.info("%s: scored %d/%d (%s): DSC %.3f, %.2f s", method, i + 1, len(val_ids), cid,
                 per_case[cid]["dice"], seconds)
    trained = json.loads((work / TRAINED).read_text(encoding="utf-8"))
    out = {"method": method, "parameters": n_params, "per_case": per_case, "memory": memory_mb(),
           "memory_before_model": base, "train_time_s": trained["train_time_s"], "training": trained}
    if torch.cuda.is_available() and args.device != "cpu":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    (work / SCORES).write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")


# ----------------------------------------------------------------------------- the comparison


def child(phase: str, method: str, argv: Sequence[str]) -> None:
    """Run one phase of one method in a fresh process (its own peak memory); its output goes to stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", phase, "--worker-method", method]
    rc = subprocess.call(cmd, stdout=sys.stderr, env=env)
    if rc:
        raise SystemExit(f"{method}: {phase} failed (exit {rc}); see the messages above.")


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any] | None:
    """The whole comparison; None when ``--time-limit`` leaves a method untrained (rerun with --resume)."""
    from nnunet_baseline import hardware

    from engine.metrics.common import json_value

    t_start = time.monotonic()
    out = Path(args.out).expanduser().absolute()
    if args.overwrite:
        shutil.rmtree(out / "work", ignore_errors=True)
        for name in ("results.json", "results.md"):
            (out / name).unlink(missing_ok=True)
    elif (out / "results.json").exists() and not args.resume:
        raise SystemExit(f"{out / 'results.json'} exists; pass --resume to keep the finished methods and add "
                         "others, or --overwrite to start over.")
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.data)
    train_ids, val_ids = read_split(args.split, ds)
    log.info("split %s: %d training, %d validation patients; budget %g min per method", args.split,
             len(train_ids), len(val_ids), args.budget_min)
    child_argv = list(argv)
    for method in args.methods:
        work = out / "work" / method
        if (work / SCORES).is_file():
            log.info("%s: finished earlier; not retrained", method)
            continue
        if not (work / TRAINED).is_file():
            if work.exists() and not args.resume:
                raise SystemExit(f"{method} has an unfinished run in {work}; pass --resume to restart it "
                                 "(a stopped training starts over, so that its budget stays exact) or "
                                 "--overwrite to start everything over.")
            if args.time_limit and time.monotonic() - t_start + 60.0 * args.budget_min > args.time_limit:
                log.warning("%s: its %g min budget does not fit in what is left of --time-limit; rerun with "
                            "--resume to continue", method, args.budget_min)
                return None
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            log.info("%s: training for %g min", method, args.budget_min)
            child("train", method, child_argv)
        log.info("%s: scoring %d validation patients", method, len(val_ids))
        child("score", method, child_argv)
    scores = {m: json.loads((out / "work" / m / SCORES).read_text(encoding="utf-8")) for m in args.methods}
    result = {
        "dataset": str(Path(args.data).absolute()), "budget_min": args.budget_min, "seed": args.seed,
        "device": args.device, "split": {"file": str(args.split), "train": train_ids, "val": val_ids},
        "options": {"width": args.width, "image_size": args.image_size, "batch_size": args.batch_size,
                    "dynunet2d_features": args.dynunet2d_features, "dynunet3d_features": args.dynunet3d_features},
        "hardware": hardware(), "methods": list(args.methods),
        "command": "python benchmarks/gtv_comparison.py " + " ".join(argv),
        "summary": summarise(scores, args.methods),
        "per_case": {m: scores[m]["per_case"] for m in args.methods},
        "training": {m: scores[m]["training"] for m in args.methods},
        "memory_before_model": {m: scores[m]["memory_before_model"] for m in args.methods},
    }
    (out / "results.json").write_text(json.dumps(json_value(result), indent=1), encoding="utf-8")
    (out / "results.md").write_text(markdown(result), encoding="utf-8")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from nnunet_baseline import NNUNET_FEATURES, NNUNET_FEATURES_2D

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="GTV dataset (nnU-Net raw layout with a 'GTV' label), e.g. the "
                   "OpenKBP conversion 'engine convert-openkbp ... --gtv-from PTV70'")
    p.add_argument("--split", default=str(REPO / "engine" / "tasks" / "gtv" / "openkbp_split.json"),
                   help="split JSON {'train': [...], 'val': [...]} (default: the fixed OpenKBP split)")
    p.add_argument("--out", required=True, help="work and result folder")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all")
    p.add_argument("--budget-min", type=float, default=60.0, help="training wall time per method (minutes)")
    p.add_argument("--width", type=int, default=64, help="GTVSeg networks' first-stage channels (engine --width)")
    p.add_argument("--image-size", type=int, help="slice size of the 2D methods (engine --image-size; default: "
                   "the GTV plan's)")
    p.add_argument("--batch-size", type=int, help="2D batch size: GTVSeg's segmenter (its classifier twice that) "
                   "and dynunet2d (default: the engine's 16 / 32, dynunet2d 16)")
    p.add_argument("--dynunet2d-features", type=int, nargs=2, metavar=("BASE", "MAX"),
                   default=list(NNUNET_FEATURES_2D), help="dynunet2d widths (default nnU-Net 2D's 32 512)")
    p.add_argument("--dynunet3d-features", type=int, nargs=2, metavar=("BASE", "MAX"),
                   default=list(NNUNET_FEATURES), help="dynunet3d widths (default nnU-Net 3D's 32 320)")
    p.add_argument("--batch-size-3d", type=int, help="dynunet3d batch size (default: the plan's)")
    p.add_argument("--patch-3d", type=int, nargs=3, metavar=("Z", "Y", "X"), help="dynunet3d patch (default: "
                   "the plan's)")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="dynunet3d target spacing (default: the plan's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes of GTVSeg and dynunet3d")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="start no training that would end after this many seconds of this command; rerun with "
                        "--resume for the rest")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished methods (trained and scored), score trained ones, (re)train the rest")
    p.add_argument("--overwrite", action="store_true", help="start over: delete the work folder and results")
    p.add_argument("--worker", choices=("train", "score"), help=argparse.SUPPRESS)
    p.add_argument("--worker-method", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget_min <= 0:
        p.error("--budget-min must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        work = Path(args.out).expanduser().absolute() / "work" / args.worker_method
        ds = load_dataset(args.data)
        train_ids, val_ids = read_split(args.split, ds)
        if args.worker == "train":
            worker_train(args.worker_method, args, work, train_ids)
        else:
            worker_score(args.worker_method, args, work, train_ids, val_ids)
        return 0
    result = run(args, argv)
    if result is None:
        return 3
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
