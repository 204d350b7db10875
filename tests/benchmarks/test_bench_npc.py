"""Smoke test of benchmarks/bench_npc.py: it runs end to end in --tiny mode and prints one JSON line.

Not a timed test: the numbers are only checked for being present, positive and consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_npc.py"


def test_tiny_benchmark_prints_one_consistent_json_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONCOSTAGING_MODEL_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["ours_s"] > 0 and result["baseline_s"] > 0 and result["threads"] == 1
    assert abs(result["ratio"] - result["ours_s"] / result["baseline_s"]) <= 1e-3
    assert len(result["ours_runs_s"]) == len(result["baseline_runs_s"]) == 1
    assert {"preprocess", "network", "gradcam", "restore"} <= set(result["ours_steps_s"])
    assert {"preprocess", "segmentation", "classification", "gradcam", "restore"} == set(result["baseline_steps_s"])
    assert result["volume"] == [16, 64, 64] and result["config"] == "tiny"
    assert result["ours_parameters"] > 0 and result["baseline_parameters"] > 0
