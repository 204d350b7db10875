"""Smoke test of benchmarks/bench_esophagus.py: it runs end to end in --tiny mode and prints one JSON line.

Not a timed test: the numbers are only checked for being present, positive and consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_esophagus.py"

KEYS = {
    "device", "device_name", "threads", "volume", "spacing", "ours_s", "baseline_s", "ratio", "ours_best_s",
    "baseline_best_s", "ours_runs_s", "baseline_runs_s", "ours_model_load_s", "ours_peak_rss_gb",
    "baseline_peak_rss_gb", "process_peak_rss_gb", "ours_rss_before_gb", "baseline_rss_before_gb",
    "ours_cuda_peak_gb", "baseline_cuda_peak_gb", "ours_steps_s", "shapes", "config",
}
STEPS = {"preprocess", "segmentation_lowres", "segmentation_fullres", "postprocess", "krt", "classification",
         "gradcam", "restore", "write", "total"}


def test_tiny_benchmark_prints_one_consistent_json_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # stdout carries the JSON line only; logs go to stderr
    result = json.loads(lines[0])

    assert KEYS <= set(result)
    assert result["device"] == "cpu" and result["threads"] >= 1
    assert result["ours_s"] > 0 and result["baseline_s"] > 0
    # ratio of the reported (4-decimal) times, itself rounded to 4 decimals
    assert abs(result["ratio"] - result["ours_s"] / result["baseline_s"]) <= 1e-4
    assert len(result["ours_runs_s"]) == len(result["baseline_runs_s"]) == 1
    assert result["ours_best_s"] == min(result["ours_runs_s"])
    assert STEPS <= set(result["ours_steps_s"])
    assert result["ours_steps_s"]["total"] <= result["ours_s"] + 1e-3

    # the tiny run's shapes: the small phantom, and the grids each side computed on
    assert result["volume"] == [64, 96, 96]
    shapes = result["shapes"]
    assert shapes["volume"] == result["volume"]
    for name in ("ours_lowres", "ours_fullres", "baseline_resampled"):
        assert len(shapes[name]) == 3 and all(isinstance(n, int) and 0 < n <= 96 for n in shapes[name]), name
    assert all(lo < full for lo, full in zip(shapes["ours_lowres"], shapes["ours_fullres"]))

    # peak resident memory per side (Linux /proc), no CUDA numbers on the CPU
    for side in ("ours", "baseline"):
        peak = result[f"{side}_peak_rss_gb"]
        assert peak is None or 0 < result[f"{side}_rss_before_gb"] <= peak <= result["process_peak_rss_gb"]
        assert result[f"{side}_cuda_peak_gb"] is None

    cfg = result["config"]
    assert cfg["tiny"] is True and "warm-up" in cfg["statistic"]
    assert set(cfg["spans"]) == {"ours", "baseline"}
    assert cfg["baseline"]["patch_size"] == [32, 32, 32] and cfg["baseline"]["tta"] is False
    assert cfg["ours"]["gradcam"] is True and cfg["autocast"].startswith("none")
    assert cfg["ours"]["tta"]["segmentation"] == "none"   # default --tta stage: like the baseline
