#!/usr/bin/env python
"""Real-size CTs end to end: ``engine run --task esophagus`` against an nnU-Net-default baseline.

For each volume — the LUNG1-001 DICOM series (512×512×134, when ``../shared/data`` has it) and a
synthetic 512×512×300 CT (a phantom resampled onto that grid, same field of view) — this runs, each in
its own process so that every peak memory figure is that run's own:

- **ours**: ``python -m engine run --task esophagus --profile`` with the defaults (``--tta all``) and
  with ``--tta none``, and optionally ``--whole-volume`` (the full-resolution stage on the whole volume,
  as before the region restriction). Wall time of the command, the step timings and peak memory of
  its report.json;
- **baseline**: MONAI ``DynUNet`` in nnU-Net's 3d_fullres default configuration (the one
  ``bench_esophagus.py`` uses, untrained: timing does not depend on weights) with MONAI's
  sliding-window inferer on the same volume, cropped, resampled to the model's full-resolution
  spacing, normalised, predicted and resampled back. ``--baseline-downsize N`` runs it on a copy
  N times coarser per axis and scales the time by the voxel ratio (reported as such).

Output: one JSON line per volume on stdout, and with ``--markdown FILE`` the table for the docs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_realsize")

LUNG1 = REPO.parent / "shared" / "data" / "nsclc_lung1_001" / "ct_dicom"
DEMO_MODEL = REPO / "models" / "esophagus-demo-0.6.0"
SYNTHETIC_SHAPE = (300, 512, 512)
#: (label, engine run options) of the configurations timed for our side
OURS = {"defaults": ["--tta", "all"], "tta_none": ["--tta", "none"]}
WHOLE = {"defaults_whole_volume": ["--tta", "all", "--whole-volume"]}


def synthetic_ct(path: Path, shape: tuple[int, int, int], seed: int = 7) -> Path:
    """A phantom CT resampled (cubic B-spline) onto ``shape`` voxels over the same field of view."""
    from engine.io.image import write_image
    from engine.preprocessing.resample import resample_to_grid
    from engine.synth import generate_case

    if path.is_file():
        return path
    image = generate_case("esophagus", seed, "small").channels[0]
    spacing = [n * s / m for n, s, m in zip(image.shape, image.spacing, shape)]
    big = resample_to_grid(image, shape, spacing)
    big.modality = "CT"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(big, path)
    return path


def run_ours(source: Path, out: Path, model: Path, device: str, options: list[str]) -> dict[str, Any]:
    """One ``engine run`` in a fresh process: wall time, step timings, peak memory, what it found."""
    command = [sys.executable, "-m", "engine", "run", "--task", "esophagus", "--input", str(source), "--out",
               str(out), "--model", str(model), "--device", device, "--overwrite", "--profile", *options]
    t0 = time.perf_counter()
    proc = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"wall_s": round(wall, 2), "total_s": report["timings_s"].get("total"), "steps_s": report["timings_s"],
            "peak_rss_mb": report.get("memory", {}).get("process_peak_rss_mb"),
            "region_fraction": report.get("full_resolution_region", {}).get("fraction_of_grid", 1.0),
            "stage": report.get("predicted_stage"), "stage_reliable": report.get("stage_reliable"),
            "domain_findings": len((report.get("domain") or {}).get("input_findings", []))
            + len((report.get("domain") or {}).get("result_findings", []))}


def baseline_once(source: Path, model: Path, device_name: str, downsize: int, tiny: bool) -> dict[str, Any]:
    """The nnU-Net-default baseline on ``source`` in this process (called in a child process)."""
    import numpy as np
    import torch
    from bench_esophagus import baseline_predict, build_baseline

    from engine.io.image import Image, read_image
    from engine.planning.planner import Plan
    from engine.preprocessing.resample import resample_to_grid, resampled_shape
    from engine.registry import load_bundle

    torch.manual_seed(0)
    image = read_image(source)
    image.modality = "CT"
    full_voxels = float(np.prod(image.shape))
    if downsize > 1:
        spacing = [s * downsize for s in image.spacing]
        image = resample_to_grid(image, resampled_shape(image.shape, image.spacing, spacing), spacing)
    plan = Plan.from_dict(load_bundle(model).plan)
    net, config = build_baseline(len(plan.labels), tiny)
    device = torch.device(device_name)
    net.to(device)
    t0 = time.perf_counter()
    labels = baseline_predict(net, Image(image.array, image.spacing, image.origin, image.direction, "CT"), plan,
                              config["patch_size"], 2, device, amp=device.type == "cuda")
    seconds = time.perf_counter() - t0
    scale = full_voxels / float(np.prod(image.shape))
    return {"seconds": round(seconds * scale, 2), "measured_s": round(seconds, 2), "downsize": downsize,
            "scaled_by_voxels": round(scale, 2), "labels_shape": list(labels.shape),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_baseline(source: Path, model: Path, device: str, downsize: int, tiny: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--baseline-only", str(source), "--model", str(model),
               "--device", device, "--baseline-downsize", str(downsize)] + (["--tiny-baseline"] if tiny else [])
    proc = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_volume(name: str, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    configs = {**OURS, **(WHOLE if args.whole_volume else {})}
    ours = {label: run_ours(source, out / f"{name}_{label}", Path(args.model), args.device, options)
            for label, options in configs.items()}
    baseline = run_baseline(source, Path(args.model), args.device, args.baseline_downsize, args.tiny_baseline)
    result = {"volume": name, "input": str(source), "ours": ours, "baseline": baseline,
              "ratio_defaults_to_baseline": round(ours["defaults"]["wall_s"] / baseline["seconds"], 3),
              "machine": machine(args.device)}
    print(json.dumps(result), flush=True)
    return result


def machine(device: str) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
            "device": device, "load_average_1min": round(load, 2) if load is not None else None}


def markdown(results: list[dict[str, Any]]) -> str:
    """The docs' table: one row per volume and configuration."""
    rows = ["| volume | run | wall s | full-res s | peak RSS GB | full-res region | stage (reliable) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for label, o in r["ours"].items():
            rows.append(f"| {r['volume']} | ours, {label.replace('_', ' ')} | {o['wall_s']:.1f} | "
                        f"{o['steps_s'].get('segmentation_fullres', 0):.1f} | {o['peak_rss_mb'] / 1024:.2f} | "
                        f"{100 * o['region_fraction']:.0f} % | {o['stage']} ({o['stage_reliable']}) |")
        b = r["baseline"]
        note = f" (measured {b['measured_s']} s at 1/{b['downsize']} per axis, ×{b['scaled_by_voxels']})" \
            if b["downsize"] > 1 else ""
        rows.append(f"| {r['volume']} | nnU-Net-default DynUNet{note} | {b['seconds']:.1f} | – | "
                    f"{b['peak_rss_mb'] / 1024:.2f} | – | – |")
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "runs" / "bench_realsize"), help="outputs of the runs")
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--device", default="cpu")
    p.add_argument("--lung1", default=str(LUNG1), help="LUNG1-001 DICOM folder (skipped when absent)")
    p.add_argument("--synthetic-shape", type=int, nargs=3, default=list(SYNTHETIC_SHAPE), metavar=("Z", "Y", "X"))
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--whole-volume", action="store_true", help="also time --whole-volume (the earlier behaviour)")
    p.add_argument("--baseline-downsize", type=int, default=1, help="run the baseline N× coarser, scale the time")
    p.add_argument("--tiny-baseline", action="store_true", help="a 4-level baseline (smoke tests)")
    p.add_argument("--markdown", help="write the table to this file")
    p.add_argument("--baseline-only", metavar="INPUT", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = parse_args(argv)
    if args.baseline_only:
        print(json.dumps(baseline_once(Path(args.baseline_only), Path(args.model), args.device,
                                       args.baseline_downsize, args.tiny_baseline)))
        return 0
    volumes = []
    if Path(args.lung1).exists():
        volumes.append(("LUNG1-001", Path(args.lung1)))
    else:
        log.warning("LUNG1-001 not found at %s: skipped", args.lung1)
    if not args.no_synthetic:
        shape = tuple(args.synthetic_shape)
        name = "synthetic {}x{}x{}".format(*shape[::-1])
        volumes.append((name, synthetic_ct(Path(args.out) / f"synthetic_{'x'.join(map(str, shape))}.nii.gz", shape)))
    results = [bench_volume(name, source, args) for name, source in volumes]
    if args.markdown:
        Path(args.markdown).write_text(markdown(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
