"""benchmarks/enhancement_response.py: the same phantoms at several tumour contrasts, scored side by side."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("enhancement_response",
                                              REPO / "benchmarks" / "enhancement_response.py")
response = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = response
SPEC.loader.exec_module(response)

DEMO_MODEL = REPO / "models" / "esophagus-demo-0.6.0"


def _summary(dice: float, pred: float, bound: float) -> dict:
    return {"n": 2, "dice": dice, "pred_voxels": pred, "ref_voxels": 300.0, "bound_2": bound}


def test_markdown_puts_each_scale_side_by_side():
    summaries = {"0": {"T1": _summary(0.5, 560, 0.4), "all": _summary(0.5, 560, 0.4)},
                 "2": {"T1": _summary(0.75, 310, 0.8), "all": _summary(0.75, 310, 0.8)}}
    table = response.markdown([0.0, 2.0], summaries, "2")
    assert "| stage (n) | EC Dice ×0 | EC Dice ×2 | predicted / true voxels ×0 |" in table
    assert "| T1 (2) | 0.500 | 0.750 | 560 / 300 | 310 / 300 | 0.400 | 0.800 |" in table
    assert "| **all** (2) |" in table


def test_refuses_bad_scales_and_a_used_folder(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    for argv in (["--scales", "-1", "1"], ["--scales", "1", "1"], ["--out", str(tmp_path / "used")]):
        base = ["--model", str(DEMO_MODEL), "--out", str(tmp_path / "new")]
        with pytest.raises(SystemExit):
            response.main(base + argv)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_MODEL / "model.json").exists(),
                    reason="the shipped demo model is not in this checkout")
def test_end_to_end_on_one_phantom_at_two_contrasts(tmp_path):
    out = tmp_path / "probe"
    # seed 7000's first phantom is a T2 (its calibration set, docs/results.md)
    assert response.main(["--model", str(DEMO_MODEL), "--out", str(out), "--seed", "7000", "--cases", "1",
                          "--scales", "0", "2", "--tta", "none"]) == 0
    result = json.loads((out / "enhancement_response.json").read_text(encoding="utf-8"))
    iso, bright = result["by_scale"]["0"], result["by_scale"]["2"]
    assert iso["T2"]["n"] == bright["T2"]["n"] == 1
    assert iso["T2"]["ref_voxels"] == bright["T2"]["ref_voxels"] > 0  # same tumour at both contrasts
    assert iso["T2"]["bound_2"] < bright["T2"]["bound_2"]             # the image shows more at ×2
    assert 0.0 <= iso["T2"]["dice"] <= 1.0 and 0.0 <= bright["T2"]["dice"] <= 1.0
    assert "EC Dice ×0" in (out / "enhancement_response.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="none of the 1 phantoms"):
        response.main(["--model", str(DEMO_MODEL), "--out", str(tmp_path / "t4"), "--seed", "7000",
                       "--cases", "1", "--stages", "T4", "--scales", "1"])
