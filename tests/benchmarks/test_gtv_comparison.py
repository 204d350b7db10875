"""benchmarks/gtv_comparison.py: nnU-Net's 2D rule, scoring and summary on hand-made numbers, and one tiny
end-to-end run (HCF + dynunet2d on six GTV phantoms, seconds of budget) with a resume."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gtv_comparison.py"
SPEC = importlib.util.spec_from_file_location("gtv_comparison", SCRIPT)
gtvc = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = gtvc
SPEC.loader.exec_module(gtvc)
import nnunet_baseline


def test_nnunet_2d_rule_pools_down_to_four_pixels_with_capped_widths():
    kernels, strides, features = nnunet_baseline.nnunet_2d_topology(128)
    # 128 → 64 → 32 → 16 → 8 → 4: five poolings, six stages, 3×3 kernels, widths 32 doubling to 512
    assert strides == [[1, 1]] + [[2, 2]] * 5 and kernels == [[3, 3]] * 6
    assert features == [32, 64, 128, 256, 512, 512]
    assert len(nnunet_baseline.nnunet_2d_topology(512)[1]) == 8  # nnU-Net's 512² 2D U-Net: 7 poolings
    assert nnunet_baseline.nnunet_2d_topology(96, (4, 8))[2] == [4, 8, 8, 8, 8]  # 96 → 3 is below 4: 4 pools
    with pytest.raises(ValueError):
        nnunet_baseline.nnunet_2d_topology(2)


def test_poly_learning_rate_over_the_budget():
    assert nnunet_baseline.poly_lr(0.0) == pytest.approx(0.01)
    assert nnunet_baseline.poly_lr(0.5) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert nnunet_baseline.poly_lr(1.0) == 0.0 and nnunet_baseline.poly_lr(2.0) == 0.0


def test_dynunet2d_trains_with_deep_supervision_and_predicts_one_map():
    import torch

    net, desc = gtvc.dynunet2d_network(32, (4, 8))
    assert desc["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2]] and desc["deep_supervision_outputs"] == 3
    x = torch.zeros(2, 1, 32, 32)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 3 and all(o.shape == (2, 2, 32, 32) for o in outs)
    assert net.eval()(x).shape == (2, 2, 32, 32)


def test_score_case_and_summary_pair_scans_with_hcf():
    ref = np.zeros((4, 10, 10), bool)
    ref[1:3, 2:6, 2:6] = True
    pred = np.zeros_like(ref)
    pred[1:3, 2:6, 4:8] = True  # overlap 16 of 32 + 32 → Dice 0.5
    s = gtvc.score_case(pred, ref, (2.0, 1.0, 1.0))
    assert s["dice"] == pytest.approx(0.5) and s["hd95_mm"] == pytest.approx(2.0)
    empty = gtvc.score_case(np.zeros_like(ref), ref, (2.0, 1.0, 1.0))
    assert empty["dice"] == 0.0 and math.isnan(empty["hd95_mm"])

    def method(dices, hd):
        return {"per_case": {f"c{i}": {"dice": d, "hd95_mm": h, "seconds": 0.5 + i}
                             for i, (d, h) in enumerate(zip(dices, hd))},
                "memory": {"peak_rss_mb": 100.0}, "parameters": 10, "train_time_s": 1.0}

    scores = {"hcf": method([0.8, 0.6, 0.7], [2.0, 4.0, 6.0]),
              "dynunet2d": method([0.7, 0.0, 0.5], [3.0, math.nan, 5.0])}
    summary = gtvc.summarise(scores, ["hcf", "dynunet2d"])
    h, d = summary["hcf"], summary["dynunet2d"]
    assert h["dice_mean"] == pytest.approx(0.7) and h["dice_sd"] == pytest.approx(0.1) and h["dice_median"] == 0.7
    assert math.isnan(h["wilcoxon_p_vs_hcf"]) and 0.0 < d["wilcoxon_p_vs_hcf"] <= 1.0
    assert d["hd95_median_mm"] == 4.0 and d["missed"] == 1 and h["missed"] == 0
    assert h["inference_s_median"] == pytest.approx(1.5)


def _table(md: str) -> dict[str, list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}


def _same(cell: str, value: float | None, tol: float) -> None:
    """A table cell shows the JSON's number (undefined ones, null in JSON, read "n/a")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        assert cell == "n/a"
    else:
        assert float(cell) == pytest.approx(value, abs=tol, rel=1e-2)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gtv")
    subprocess.run([sys.executable, "-m", "engine", "synth", "--task", "gtv", "--cases", "6", "--preset", "small",
                    "--out", str(root / "data")], check=True, cwd=REPO, capture_output=True)
    split = root / "split.json"
    split.write_text(json.dumps({"train": [f"gtv_00{i}" for i in range(4)], "val": ["gtv_004", "gtv_005"]}))
    return root / "data", split


def test_tiny_end_to_end_run_resume_and_refusal(phantoms, tmp_path):
    data, split = phantoms
    out = tmp_path / "run"
    args = ["--data", str(data), "--split", str(split), "--out", str(out), "--methods", "hcf", "dynunet2d",
            "--budget-min", "0.04", "--width", "4", "--image-size", "32", "--batch-size", "2",
            "--dynunet2d-features", "4", "8", "--device", "cpu", "--seed", "1"]
    assert gtvc.main(args) == 0
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["methods"] == ["hcf", "dynunet2d"] and result["split"]["val"] == ["gtv_004", "gtv_005"]
    table = _table((out / "results.md").read_text(encoding="utf-8"))
    assert set(table) == {"hcf", "dynunet2d"}
    for m in ("hcf", "dynunet2d"):
        per_case, s = result["per_case"][m], result["summary"][m]
        assert set(per_case) == {"gtv_004", "gtv_005"}  # every validation scan scored
        assert all(0.0 <= c["dice"] <= 1.0 and c["seconds"] > 0 for c in per_case.values())
        assert s["n"] == 2 and s["parameters"] > 0 and s["peak_rss_mb"] > 50 and s["train_time_s"] > 0
        params, dsc, median, hd95, missed, p, seconds, memory, train = table[m]
        assert params == f"{s['parameters']:,}" and int(missed) == s["missed"]
        mean, sd = dsc.split(" ± ")
        for cell, value, tol in ((mean, s["dice_mean"], 5e-4), (sd, s["dice_sd"], 5e-4),
                                 (median, s["dice_median"], 5e-4), (hd95, s["hd95_median_mm"], 0.05),
                                 (seconds, s["inference_s_median"], 5e-3), (memory, s["peak_rss_mb"], 0.5),
                                 (train, s["train_time_s"], 0.5), (p, s["wilcoxon_p_vs_hcf"], 5e-3)):
            _same(cell, value, tol)
    assert table["hcf"][5] == "n/a"  # HCF is the reference of the test
    md = (out / "results.md").read_text(encoding="utf-8")
    assert re.search(r"budget: 0\.04 min", md) and "torch thread" in md and "split.json" in md and "--budget-min" in md

    with pytest.raises(SystemExit, match="--overwrite"):  # finished results are never replaced silently
        gtvc.main(args)
    stamps = {m: (out / "work" / m / gtvc.SCORES).stat().st_mtime_ns for m in ("hcf", "dynunet2d")}
    trained = (out / "work" / "hcf" / gtvc.TRAINED).read_text(encoding="utf-8")
    assert gtvc.main(args + ["--resume"]) == 0  # both finished: nothing retrained nor rescored
    assert {m: (out / "work" / m / gtvc.SCORES).stat().st_mtime_ns for m in stamps} == stamps
    assert (out / "work" / "hcf" / gtvc.TRAINED).read_text(encoding="utf-8") == trained
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert again["per_case"] == result["per_case"]


def test_time_limit_starts_no_training_that_would_overrun(phantoms, tmp_path):
    data, split = phantoms
    out = tmp_path / "run"
    args = ["--data", str(data), "--split", str(split), "--out", str(out), "--methods", "hcf",
            "--budget-min", "1", "--device", "cpu"]
    assert gtvc.main(args + ["--time-limit", "30"]) == 3  # a 60 s budget does not fit in 30 s
    assert not (out / "work" / "hcf").exists() and not (out / "results.json").exists()
    (out / "work" / "hcf").mkdir(parents=True)  # as a killed training leaves it
    with pytest.raises(SystemExit, match="--resume"):
        gtvc.main(args)


def test_dynunet3d_plans_on_training_cases_and_scores_every_validation_scan(phantoms, tmp_path):
    data, split = phantoms
    out = tmp_path / "run3d"
    assert gtvc.main(["--data", str(data), "--split", str(split), "--out", str(out), "--methods", "dynunet3d",
                      "--budget-min", "0.08", "--dynunet3d-features", "4", "8", "--batch-size-3d", "1",
                      "--patch-3d", "16", "32", "32", "--device", "cpu"]) == 0
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    trained = result["training"]["dynunet3d"]
    assert trained["patch_size"] == [16, 32, 32] and trained["features"][:2] == [4, 8] and trained["steps"] >= 1
    assert trained["deep_supervision_outputs"] == len(trained["strides"]) - 1  # one per decoder level, at most 4
    assert set(result["per_case"]["dynunet3d"]) == {"gtv_004", "gtv_005"}
    assert result["summary"]["dynunet3d"]["wilcoxon_p_vs_hcf"] is None  # no HCF in this run: no test
