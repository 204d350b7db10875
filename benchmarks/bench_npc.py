#!/usr/bin/env python
"""Speed benchmark: NPCStaging Segment & Stage against a two-model MONAI baseline.

On one synthetic MRI phantom (``realistic`` preset: 21 × 224 × 224 voxels at 6 × 0.4688 × 0.4688 mm) this
times, in one process with one thread count, after one warm-up run each, the two taking turns:

- **ours**: :class:`engine.tasks.npc.predictor.NpcPredictor` end to end — MRI check, preprocessing and
  head crop, the one multi-task network (3D U-Net → probability map × image → Bottleneck Transformer →
  feature fusion), Grad-CAM of the predicted stage, restoring the mask and the map to the input's grid;
- **baseline**: the same steps with two separate MONAI networks — ``DynUNet`` (the same strides, kernels
  and widths as our U-Net) for the GTV, then MONAI's 3D ``resnet50`` (the same width) staging
  probability map × image — as a pipeline without the paper's blocks would run.

The model is the installed (shipped) NPC model unless ``--model`` names another; ``--paper`` instead
times untrained networks at the paper's widths and grid (timing does not depend on weight values);
``--tiny`` is a seconds-long smoke run. Output: exactly one JSON line on stdout (logs go to stderr).

    OMP_NUM_THREADS=2 python benchmarks/bench_npc.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

import numpy as np
import torch

log = logging.getLogger("bench_npc")
PHANTOM_SEED = 424242


def untrained_bundle(root: Path, preset: str, spacing: tuple[float, float, float] | None, unet_width: int,
                     unet_max_width: int, stage_width: int) -> Any:
    """A bundle with random weights (fixed seed) and a plan made on two phantoms of ``preset``."""
    from engine.data.dataset import RawDataset
    from engine.registry import save_bundle
    from engine.synth import generate_dataset
    from engine.tasks.npc import TASK
    from engine.tasks.npc.data import npc_plan
    from engine.tasks.npc.networks import NpcNetwork, network_config
    from engine.tasks.npc.options import ARCHITECTURE, NETWORK

    generate_dataset("npc", root / "data", cases=2, seed=1, preset=preset)
    plan = npc_plan(RawDataset.load(root / "data"), spacing)
    cfg = plan.configuration("3d_fullres")
    torch.manual_seed(0)
    net = NpcNetwork(network_config(cfg.patch_size, cfg.spacing, unet_width, unet_max_width, stage_width, 4))
    return save_bundle(root / "model", id="npc-benchmark", name="untrained (timing only)", version="0.0.0",
                       task=TASK.name, architecture={"name": ARCHITECTURE, "network": net.config.to_dict()},
                       plan=plan.to_dict(), labels=TASK.styled_labels(plan.labels), stages=list(TASK.stage_names),
                       modality="MR", training={}, metrics={}, intended_use="timing only",
                       weights={NETWORK: net.state_dict()})


class TwoModelBaseline:
    """MONAI DynUNet for the GTV, then MONAI resnet50 on probability map × image, with our pre/post steps."""

    def __init__(self, predictor: Any):
        from monai.networks.nets import DynUNet, resnet50

        self.plan, config = predictor.plan, predictor.config
        self.padded = config.padded_size
        self.unet = DynUNet(3, 1, 1, config.kernel_sizes, config.strides, config.strides[1:],
                            filters=config.unet_widths, norm_name="instance").eval()
        stem = ((3, 7, 7), (1, 2, 2)) if config.thick_slices else (7, 2)
        self.resnet = resnet50(spatial_dims=3, n_input_channels=1, num_classes=4, conv1_t_size=stem[0],
                               conv1_t_stride=stem[1], widen_factor=config.stage_width / 64).eval()
        self.timings: dict[str, float] = {}

    def predict(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        from engine.explain.gradcam import grad_cam
        from engine.preprocessing.pipeline import Preprocessor
        from engine.tasks.npc.data import prepare
        from engine.tasks.npc.predictor import check_mri

        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            self.timings[step] = round(time.perf_counter() - clock, 3)
            clock = time.perf_counter()

        check_mri(image)
        prepared = prepare(self.plan, image)
        x = torch.from_numpy(prepared.image[None])
        pad = [p - n for p, n in zip(self.padded, x.shape[2:])]
        x = torch.nn.functional.pad(x, [a for p in reversed(pad) for a in (0, p)])
        lap("preprocess")
        with torch.no_grad():
            probability = torch.sigmoid(self.unet(x))
            lap("segmentation")
            gated = probability * x
            stages = torch.softmax(self.resnet(gated), 1)[0]
            lap("classification")
        cam = grad_cam(self.resnet, self.resnet.layer3, (gated,), class_index=int(stages.argmax())).cam
        lap("gradcam")
        crop = tuple(slice(0, n) for n in prepared.image.shape[1:])
        foreground = prepared.crop.paste(probability[0, 0].numpy()[crop])
        restored = Preprocessor.restore_probabilities(np.stack([1.0 - foreground, foreground]), prepared.record)[1]
        cam_map = Preprocessor.restore_map(prepared.crop.paste(cam[crop]), prepared.record)
        lap("restore")
        return (restored >= 0.5).astype(np.uint8), cam_map


def interleaved_runs(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` runs of every pipeline, after one warm-up run each; the pipelines take
    turns, so a change in the machine's load during the benchmark falls on both alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(round(time.perf_counter() - t0, 4))
    return times


def benchmark(predictor: Any, image: Any, repeats: int) -> dict[str, Any]:
    """Both pipelines on ``image``; medians, every run, and each pipeline's steps (from its last run)."""
    baseline = TwoModelBaseline(predictor)
    steps: dict[str, float] = {}

    def ours() -> None:
        steps.update(predictor.predict(image, gradcam=True).timings_s)

    runs = interleaved_runs({"ours": ours, "baseline": lambda: baseline.predict(image)}, repeats)
    ours_s, baseline_s = round(statistics.median(runs["ours"]), 4), round(statistics.median(runs["baseline"]), 4)
    count = lambda net: sum(p.numel() for p in net.parameters())
    return {"volume": list(image.shape), "spacing": [round(s, 4) for s in image.spacing],
            "threads": torch.get_num_threads(), "device": "cpu", "repeats": repeats,
            "ours_s": ours_s, "baseline_s": baseline_s, "ratio": round(ours_s / baseline_s, 4),
            "ours_runs_s": runs["ours"], "baseline_runs_s": runs["baseline"], "ours_steps_s": steps,
            "baseline_steps_s": baseline.timings, "ours_parameters": count(predictor.net),
            "baseline_parameters": count(baseline.unet) + count(baseline.resnet),
            "head_crop": predictor.config.patch_size, "grid_spacing": predictor.plan.configuration().spacing,
            "model": f"{predictor.bundle.id} {predictor.bundle.version}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", help="bundle folder or installed id (default: the installed NPC model)")
    parser.add_argument("--paper", action="store_true",
                        help="untrained networks at the paper's widths (32/64) and grid (0.4688 mm, 21 × 224 × 224)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run (small phantom, narrow nets)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pipeline (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from engine.synth import generate_case
    from engine.tasks import get_task

    preset = "small" if args.tiny else "realistic"
    image = generate_case("npc", PHANTOM_SEED, preset).channels[0]
    with tempfile.TemporaryDirectory(prefix="bench-npc-") as tmp:
        model: Any = args.model
        if args.tiny:
            model = untrained_bundle(Path(tmp), "small", (6.0, 3.28, 3.28), 8, 16, 8)
        elif args.paper:
            model = untrained_bundle(Path(tmp), "realistic", None, 32, 320, 64)
        predictor = get_task("npc").load_predictor(model, "cpu")
        result = benchmark(predictor, image, args.repeats)
    result["config"] = "tiny" if args.tiny else "paper widths, untrained" if args.paper else "trained model"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
