"""The real-size benchmark's smoke run: a small synthetic CT, both of our configurations and the baseline
each in their own process, one consistent JSON line and the docs' table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_realsize.py"


@pytest.mark.slow
def test_small_synthetic_run_reports_ours_baseline_and_memory(tmp_path):
    if not (REPO / "models" / "esophagus-demo-0.6.0" / "model.json").is_file():
        pytest.skip("the shipped demo model is not in this checkout")
    table = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "runs"), "--lung1", str(tmp_path / "absent"),
                           "--synthetic-shape", "48", "80", "80", "--tiny-baseline", "--baseline-downsize", "2",
                           "--markdown", str(table)], check=False, capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [x for x in proc.stdout.splitlines() if x.strip()]
    result = json.loads(line)
    assert result["volume"] == "synthetic 80x80x48"
    assert set(result["ours"]) == {"defaults", "tta_none"}
    for run in result["ours"].values():
        assert run["wall_s"] >= run["total_s"] > 0 and run["peak_rss_mb"] > 0
        assert "segmentation_fullres" in run["steps_s"] and 0 < run["region_fraction"] <= 1
        assert run["stage"] in ("T1", "T2", "T3", "T4")
    baseline = result["baseline"]
    assert baseline["downsize"] == 2 and baseline["scaled_by_voxels"] > 4
    assert baseline["seconds"] == pytest.approx(baseline["measured_s"] * baseline["scaled_by_voxels"], rel=0.02)
    assert result["ratio_defaults_to_baseline"] == pytest.approx(result["ours"]["defaults"]["wall_s"]
                                                                 / baseline["seconds"], abs=1e-3)
    text = table.read_text(encoding="utf-8")
    assert text.count("| synthetic 80x80x48 |") == 3 and "measured" in text
