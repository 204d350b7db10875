#!/usr/bin/env python
"""Speed benchmark: EsophagusStaging Segment & Stage against an nnU-Net 3d_fullres baseline.

On one synthetic CT phantom (``realistic`` preset: 237×256×256 at 1.0×0.73×0.73 mm) this times, in one
process with one thread count:

- **ours**: :func:`engine.tasks.esophagus.segment.segment_and_stage` end to end — intensity check,
  preprocessing (both cascade resolutions), low- and full-resolution sliding windows, post-processing,
  KRT crop, stage classification, Grad-CAM, restoring to the original geometry and writing every output
  file (segmentation.nii.gz, segmentation.seg.nrrd, gradcam.nii.gz, overview.png, report.json);
- **baseline**: MONAI ``DynUNet`` in nnU-Net's 3d_fullres default configuration (6 levels, 32→320
  filters, patch 128³, overlap 0.5, gaussian blending, no test-time augmentation) through
  ``sliding_window_inference`` on the same volume, preprocessed the way nnU-Net does (crop to non-zero,
  resample to the plan's full-resolution spacing, CT z-score), then argmax and the label map resampled
  back to the original grid.

Timing does not depend on weight values, so unless ``--model`` names a trained bundle the benchmark
builds an untrained bundle (random init, fixed torch seed) from a plan made on the phantom itself.

Output: exactly one JSON line on stdout (everything else goes to stderr). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("bench_esophagus")

GB = 1024 ** 3

#: nnU-Net 3d_fullres default DynUNet (6 levels, 32 doubling to 320, 3³ kernels, 128³ patch).
BASELINE_FULL = dict(levels=6, filters=[32, 64, 128, 256, 320, 320], patch=[128, 128, 128])
#: Smoke mode: 4 levels so that a 32³ patch still has a 4³ bottleneck (instance norm needs > 1 voxel).
BASELINE_TINY = dict(levels=4, filters=[4, 8, 16, 16], patch=[32, 32, 32])
#: Smoke mode: the small phantom planned at a coarse spacing, 4→8-channel networks (as tests/pipelines).
TINY_SPACING = (6.0, 3.9, 3.9)
TINY_FEATURES = (4, 8)
OURS_SW_BATCH = 2  # engine.inference.sliding_window.SlidingWindowPredictor default, CPU and GPU
OVERLAP = 0.5


# ============================================================================ resident memory


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS counter (VmHWM); Linux ≥ 4.0, needs write access to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS, so one side's leftovers do not count as the other's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssMonitor:
    """Peak resident set size per measured window, plus the process peak.

    Per window the peak is the kernel's VmHWM after resetting it through ``/proc/self/clear_refs``
    (exact), and, as a fallback or cross-check, the maximum of VmRSS sampled every ``interval`` s by a
    background thread (can miss spikes shorter than the interval). The process peak is the maximum of
    every VmHWM read before a reset and at the end, and of all samples.
    """

    def __init__(self, interval: float = 0.005):
        self.available = _proc_status_kb("VmRSS") is not None
        self.interval = interval
        self.process_peak_kb = _proc_status_kb("VmHWM") or 0
        self.hwm_resettable = False
        self._window_peak_kb = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if self.available:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _proc_status_kb("VmRSS") or 0
            with self._lock:
                self._window_peak_kb = max(self._window_peak_kb, rss)
                self.process_peak_kb = max(self.process_peak_kb, rss)

    def _note_hwm(self) -> None:
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None:
            self.process_peak_kb = max(self.process_peak_kb, hwm)

    @property
    def method(self) -> str:
        if not self.available:
            return "unavailable (no /proc/self/status)"
        if self.hwm_resettable:
            return (f"VmHWM reset through /proc/self/clear_refs before each side (exact), max with VmRSS "
                    f"sampled every {self.interval * 1000:g} ms")
        return f"VmRSS sampled every {self.interval * 1000:g} ms (VmHWM could not be reset)"

    @contextlib.contextmanager
    def window(self, result: dict[str, Any]) -> Iterator[None]:
        """Measure the block: ``result`` gets ``rss_before_gb`` and ``peak_rss_gb``."""
        gc.collect()
        _malloc_trim()
        self._note_hwm()
        if self.available:
            self.hwm_resettable = _reset_hwm()
        before = _proc_status_kb("VmRSS") or 0
        with self._lock:
            self._window_peak_kb = before
        try:
            yield
        finally:
            hwm = _proc_status_kb("VmHWM") if self.hwm_resettable else None
            with self._lock:
                peak = max(self._window_peak_kb, hwm or 0, _proc_status_kb("VmRSS") or 0)
            self._note_hwm()
            self.process_peak_kb = max(self.process_peak_kb, peak)
            result["rss_before_gb"] = round(before * 1024 / GB, 3) if self.available else None
            result["peak_rss_gb"] = round(peak * 1024 / GB, 3) if self.available else None

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._note_hwm()
        import resource
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        peak_kb = max(self.process_peak_kb, maxrss if sys.platform.startswith("linux") else 0)
        return round(peak_kb * 1024 / GB, 3) if peak_kb else None


# ============================================================================ setup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_phantom_and_plan(args: argparse.Namespace, work: Path):
    """Write the phantom case(s) to a temporary dataset; plan on them unless a bundle is given."""
    from engine.planning import extract_fingerprint, make_plan
    from engine.synth import generate_dataset

    cases = 1 if args.model else args.plan_cases
    log.info("writing %d %s esophagus phantom case(s) (seed %d) ...", cases, args.preset, args.seed)
    ds = generate_dataset("esophagus", work / "data", cases=cases, seed=args.seed, preset=args.preset)
    case = ds.training[0]
    plan = None
    if not args.model:
        plan = make_plan(extract_fingerprint(ds), "esophagus", spacing=TINY_SPACING if args.tiny else None)
    return case.load_image(), case.image_files[0], plan


def untrained_bundle(plan, args: argparse.Namespace, out: Path):
    """An EsophagusStaging bundle with random weights (fixed torch seed), saved like a trained one."""
    from engine.models.nn_mtnet import ClassifierOptions, NnMTNet, SegmentationNet
    from engine.registry.bundle import save_bundle
    from engine.tasks.esophagus import STAGES, TASK
    from engine.tasks.esophagus.networks import network_specs
    from engine.tasks.esophagus.options import ARCHITECTURE, CLASSIFIER, FULLRES, LOWRES, TrainOptions

    options = TrainOptions(base_features=args.base_features, max_features=args.max_features,
                           seed=args.seed, device="cpu")
    spec_low, spec_full = network_specs(plan, options)
    stage_names = list(plan.stage_names or STAGES)
    cls_options = ClassifierOptions(num_stages=len(stage_names), attention=True)
    torch.manual_seed(args.seed)
    low_net = SegmentationNet(spec_low)
    net = NnMTNet(spec_full, cls_options)
    net.transfer_encoder()  # as training does; weight values do not change the timing
    architecture = {"name": ARCHITECTURE, "lowres": spec_low.to_dict(), "fullres": spec_full.to_dict(),
                    "classifier": asdict(cls_options), "krt": True, "direct_3d": False,
                    "whole_volume_size": None, "variant": "full"}
    bundle = save_bundle(
        out, id="bench-esophagus-untrained", name="Untrained nn-MTNet (benchmark only)", version="0.0.0",
        task=TASK.name, architecture=architecture, plan=plan.to_dict(), labels=TASK.styled_labels(plan.labels),
        stages=stage_names, modality="CT",
        training={"note": "untrained: random initialisation, for timing only", "seed": args.seed,
                  "options": asdict(options)},
        metrics={}, intended_use="benchmark timing only; untrained, produces meaningless output",
        weights={LOWRES: low_net.state_dict(), FULLRES: net.segmentation.state_dict(),
                 CLASSIFIER: net.classifier.state_dict()})
    del low_net, net
    return bundle


def expected_shapes(image, plan) -> dict[str, list[int]]:
    """Grids each side computes on (before padding to the patch), without running anything."""
    from engine.preprocessing import crop as cropping
    from engine.preprocessing.resample import resampled_shape

    box = cropping.foreground_box(image.array, image.modality or "CT")
    cropped = [b - a for a, b in box]
    nz_shape = [b - a for a, b in _nonzero_box(image.array)]
    low, full = plan.configuration("3d_lowres").spacing, plan.configuration("3d_fullres").spacing
    return {
        "volume": list(image.shape),
        "ours_lowres": resampled_shape(cropped, image.spacing, low),
        "ours_fullres": resampled_shape(cropped, image.spacing, full),
        "baseline_resampled": resampled_shape(nz_shape, image.spacing, full),
    }


# ============================================================================ baseline


def _nonzero_box(array: np.ndarray) -> list[list[int]]:
    """nnU-Net's crop to non-zero: for a CT in HU this is (almost) the whole volume."""
    nz = np.nonzero(array != 0)
    if not nz[0].size:
        return [[0, n] for n in array.shape]
    return [[int(ax.min()), int(ax.max()) + 1] for ax in nz]


def build_baseline(num_classes: int, tiny: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    from monai.networks.nets import DynUNet

    cfg = BASELINE_TINY if tiny else BASELINE_FULL
    levels = cfg["levels"]
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=num_classes, kernel_size=[[3, 3, 3]] * levels,
                  strides=[[1, 1, 1]] + [[2, 2, 2]] * (levels - 1),
                  upsample_kernel_size=[[2, 2, 2]] * (levels - 1), filters=list(cfg["filters"]),
                  norm_name=("INSTANCE", {"affine": True}),
                  act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                  deep_supervision=False, res_block=False)
    net = DynUNet(**kwargs).eval()
    return net, {"network": "monai.networks.nets.DynUNet", **{k: v for k, v in kwargs.items()
                                                              if k not in ("spatial_dims",)},
                 "patch_size": list(cfg["patch"]),
                 "parameters": sum(p.numel() for p in net.parameters())}


def baseline_predict(net: torch.nn.Module, image, plan, patch: list[int], sw_batch: int, device: torch.device,
                     amp: bool) -> np.ndarray:
    """nnU-Net-style inference: numpy volume in memory → label map (uint8) on the original grid."""
    from monai.inferers import sliding_window_inference

    from engine.io.image import Image
    from engine.preprocessing import crop as cropping
    from engine.preprocessing.normalize import normalize
    from engine.preprocessing.resample import resample_to_grid, resampled_shape

    cfg = plan.configuration("3d_fullres")
    box = _nonzero_box(image.array)
    cropped = Image(cropping.crop(image.array, box), image.spacing, image.origin, image.direction, "CT")
    shape = resampled_shape(cropped.shape, image.spacing, cfg.spacing)
    resampled = resample_to_grid(cropped, shape, cfg.spacing).array  # 3rd-order B-spline
    x = torch.from_numpy(np.ascontiguousarray(normalize(resampled, plan.normalization)))[None, None]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = sliding_window_inference(x.to(device), patch, sw_batch, net, overlap=OVERLAP,
                                          mode="gaussian", sw_device=device, device=device, progress=False)
        labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    small = Image(labels, cfg.spacing, image.origin, image.direction)
    back = resample_to_grid(small, cropped.shape, image.spacing, is_label=True).array  # nearest
    return cropping.uncrop(back[None], box, image.shape, fill=0)[0]


# ============================================================================ timing


def time_runs(fn: Callable[[int], Any], warmup: int, repeats: int,
              device: torch.device) -> tuple[list[float], list[Any]]:
    for i in range(warmup):
        log.info("  warm-up %d/%d", i + 1, warmup)
        fn(-1 - i)
    times, results = [], []
    for i in range(repeats):
        _sync(device)
        t = time.perf_counter()
        results.append(fn(i))
        _sync(device)
        times.append(time.perf_counter() - t)
        log.info("  run %d/%d: %.3f s", i + 1, repeats, times[-1])
    return times, results


def _cuda_window_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _cuda_peak_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / GB, 3)


def _median_index(times: list[float]) -> int:
    order = sorted(range(len(times)), key=times.__getitem__)
    return order[(len(order) - 1) // 2]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import monai
    import SimpleITK as sitk

    from engine.planning.planner import Plan
    from engine.registry import load_bundle
    from engine.tasks.esophagus import TASK
    from engine.tasks.esophagus.predictor import EsophagusPredictor
    from engine.tasks.esophagus.segment import segment_and_stage
    from engine.utils.device import describe_device, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    device = select_device(args.device)
    monitor = RssMonitor()
    work = Path(tempfile.mkdtemp(prefix="bench_esophagus_"))
    try:
        image, image_path, plan = make_phantom_and_plan(args, work)
        if args.model:
            bundle = load_bundle(Path(args.model).expanduser(), expected_task=TASK.name, verify=True)
            where = Path(args.model).expanduser().absolute()
            model_desc = f"bundle {bundle.id} {bundle.version} from --model ({where})"
        else:
            bundle = untrained_bundle(plan, args, work / "model")
            model_desc = f"untrained bundle (random init, torch seed {args.seed}) planned on the phantom"
        plan = Plan.from_dict(bundle.plan)
        num_classes = len(plan.labels)
        shapes = expected_shapes(image, plan)
        gc.collect()
        amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
        threads = torch.get_num_threads()
        log.info("device %s, %d torch thread(s), volume %s, bf16 autocast %s", describe_device(device),
                 threads, shapes["volume"], amp)

        # --- ours: Segment & Stage -----------------------------------------------------------------
        ours: dict[str, Any] = {}
        outputs_root = work / "runs"
        log.info("ours: Segment & Stage (warm-up %d, repeats %d)", args.warmup, args.repeats)
        _cuda_window_start(device)
        with monitor.window(ours):
            t = time.perf_counter()
            predictor = EsophagusPredictor(bundle, str(device))
            ours["model_load_s"] = round(time.perf_counter() - t, 4)

            def ours_once(i: int) -> dict[str, Any]:
                out = outputs_root / f"ours_{i}"
                if args.from_file:
                    result = segment_and_stage(image_path, out, bundle, device=str(device), gradcam=True,
                                               tta=args.tta)
                else:
                    result = segment_and_stage(image, out, predictor, device=str(device), gradcam=True,
                                               tta=args.tta)
                files = sorted(p.name for p in result.files.values())
                shutil.rmtree(out, ignore_errors=True)  # not counted: the writes have finished
                return {"report": result.report, "files": files}

            ours_times, ours_results = time_runs(ours_once, args.warmup, args.repeats, device)
            ours_net = {"lowres_features": predictor.low_net.spec.features,
                        "fullres_features": predictor.net.segmentation.spec.features,
                        "parameters": sum(p.numel() for m in (predictor.low_net, predictor.net.segmentation,
                                                              *(c.classifier for c in predictor.members))
                                          for p in m.parameters()),
                        "stage_classifiers": len(predictor.members)}
            del predictor
        ours["cuda_peak_gb"] = _cuda_peak_gb(device)
        median_ours = ours_results[_median_index(ours_times)]

        # --- baseline: DynUNet 3d_fullres ----------------------------------------------------------
        base: dict[str, Any] = {}
        sw_batch = 2 if device.type == "cuda" else 1
        log.info("baseline: DynUNet sliding window (warm-up %d, repeats %d)", args.warmup, args.repeats)
        _cuda_window_start(device)
        with monitor.window(base):
            torch.manual_seed(args.seed)
            net, base_cfg = build_baseline(num_classes, args.tiny)
            net.to(device)

            def base_once(i: int) -> tuple[int, ...]:
                labels = baseline_predict(net, image, plan, base_cfg["patch_size"], sw_batch, device, amp)
                assert labels.shape == image.shape
                return labels.shape

            base_times, _ = time_runs(base_once, args.warmup, args.repeats, device)
            del net
        base["cuda_peak_gb"] = _cuda_peak_gb(device)
        process_peak = monitor.stop()

        ours_s, base_s = round(statistics.median(ours_times), 4), round(statistics.median(base_times), 4)
        cfg_low, cfg_full = plan.configuration("3d_lowres"), plan.configuration("3d_fullres")
        return {
            "device": device.type,
            "device_name": describe_device(device),
            "threads": threads,
            "volume": shapes["volume"],
            "spacing": [float(s) for s in image.spacing],
            "ours_s": ours_s,
            "baseline_s": base_s,
            "ratio": round(ours_s / base_s, 4),
            "ours_best_s": round(min(ours_times), 4),
            "baseline_best_s": round(min(base_times), 4),
            "ours_runs_s": [round(t, 4) for t in ours_times],
            "baseline_runs_s": [round(t, 4) for t in base_times],
            "ours_model_load_s": ours["model_load_s"],
            "ours_peak_rss_gb": ours["peak_rss_gb"],
            "baseline_peak_rss_gb": base["peak_rss_gb"],
            "process_peak_rss_gb": process_peak,
            "ours_rss_before_gb": ours["rss_before_gb"],
            "baseline_rss_before_gb": base["rss_before_gb"],
            "ours_cuda_peak_gb": ours["cuda_peak_gb"],
            "baseline_cuda_peak_gb": base["cuda_peak_gb"],
            "ours_steps_s": median_ours["report"]["timings_s"],
            "shapes": shapes,
            "config": {
                "preset": "small (tiny smoke mode)" if args.tiny else args.preset,
                "seed": args.seed,
                "tiny": args.tiny,
                "model": model_desc,
                "plan_cases": None if args.model else args.plan_cases,
                "statistic": (f"median of {args.repeats} timed run(s) per side, after {args.warmup} warm-up "
                              "run(s) per side that are not counted; *_best_s is the fastest run"),
                "order": ("ours first, then baseline; each side's models are built inside its own "
                          "memory window"),
                "spans": {
                    "ours": ("Image in memory → segment_and_stage(): CT intensity check, preprocessing "
                             "(crop, B-spline resampling, normalisation) at both cascade resolutions, low- "
                             "and full-res sliding windows, largest-component post-processing, KRT crop, "
                             "stage classification, Grad-CAM, restoring to the original geometry, writing "
                             f"{', '.join(median_ours['files'])}"
                             + ("; reading the input file and loading the bundle included" if args.from_file
                                else "; model loaded once beforehand (ours_model_load_s, not timed)")),
                    "baseline": ("numpy volume in memory → crop to non-zero → B-spline resampling to the "
                                 "plan's 3d_fullres spacing → CT normalisation (clip to foreground "
                                 "0.5–99.5 %, z-score) → DynUNet sliding window → argmax → "
                                 "nearest-neighbour resampling of the label map back to the original grid "
                                 "(uint8 label map in memory; nothing written; network built beforehand, "
                                 "not timed)"),
                },
                "ours": {"input": "file" if args.from_file else "in-memory Image", "gradcam": True,
                         "base_features": None if args.model else args.base_features,
                         "max_features": None if args.model else args.max_features, **ours_net,
                         "lowres_spacing": cfg_low.spacing, "lowres_patch": cfg_low.patch_size,
                         "fullres_spacing": cfg_full.spacing, "fullres_patch": cfg_full.patch_size,
                         "krt_box": plan.krt_box_size, "sw_batch_size": OURS_SW_BATCH, "overlap": OVERLAP,
                         "blend": "gaussian", "tta": median_ours["report"]["test_time_augmentation"],
                         "warnings": median_ours["report"]["warnings"]},
                "baseline": {**base_cfg, "sw_batch_size": sw_batch, "overlap": OVERLAP, "blend": "gaussian",
                             "tta": False, "spacing": cfg_full.spacing,
                             "normalization": asdict(plan.normalization)},
                "autocast": ("bf16 for both sides' sliding windows (ours: classification and Grad-CAM "
                             "in fp32)" if amp else "none (fp32) for both sides"),
                "grad_mode": ("baseline under torch.inference_mode(); ours manages its own (no_grad, "
                              "grad for Grad-CAM)"),
                "threads": {"torch": threads, "torch_interop": torch.get_num_interop_threads(),
                            "simpleitk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
                            "requested": args.threads, "cpu_count": os.cpu_count()},
                "rss_method": monitor.method,
                "process_peak_includes": "setup (phantom generation, planning, bundle) and both sides",
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "monai": monai.__version__, "simpleitk": sitk.Version_VersionString(),
                             "platform": platform.platform()},
            },
        }
    finally:
        monitor.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from engine.tasks.base import TTA_MODES  # run's --tta levels (imports no torch/MONAI)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=("realistic", "small"), default="realistic",
                   help="phantom preset: realistic is 237×256×256 at 1.0×0.73×0.73 mm")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per side")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and SimpleITK threads (default: torch's default)")
    p.add_argument("--model", default=None, help="trained EsophagusStaging bundle; default: an untrained one")
    p.add_argument("--base-features", type=int, default=32,
                   help="width of the untrained bundle (nnU-Net: 32)")
    p.add_argument("--max-features", type=int, default=320,
                   help="width cap of the untrained bundle (nnU-Net: 320)")
    p.add_argument("--plan-cases", type=int, default=3,
                   help="phantom cases the untrained bundle's plan is made on (case 0 is the timed volume)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed and torch seed of the untrained weights")
    p.add_argument("--from-file", action="store_true",
                   help="time segment_and_stage(path, ..., bundle) including reading the NIfTI and loading "
                        "the bundle, instead of the in-memory image with a loaded model")
    p.add_argument("--tta", choices=TTA_MODES, default="stage",
                   help="ours' test-time augmentation (run --tta); 'stage' leaves the segmentation unmirrored, "
                        "like the baseline, and mirrors only the small stage-classifier crop; 'all' is run's "
                        "default")
    p.add_argument("--tiny", action="store_true",
                   help="smoke mode for tests: small phantom planned at a coarse spacing, 4→8-channel "
                        "networks, 4-level DynUNet with 32³ patches")
    args = p.parse_args(argv)
    if (args.repeats < 1 or args.warmup < 0 or args.plan_cases < 1
            or (args.threads is not None and args.threads < 1)):
        p.error("--repeats and --plan-cases must be ≥ 1, --warmup ≥ 0, --threads ≥ 1")
    if args.tiny:
        args.preset = "small"
        args.base_features, args.max_features = TINY_FEATURES
        args.plan_cases = min(args.plan_cases, 2)
        if args.model:
            p.error("--tiny builds its own tiny networks; it cannot be combined with --model")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stdout = sys.stdout
    from engine.errors import EngineError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON line only
            result = run(args)
    except EngineError as exc:
        log.error("%s", exc)
        return 2
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
