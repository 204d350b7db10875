"""benchmarks/pool_evaluations.py: several evaluate outputs pooled into one report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation import evaluate_case, summarize, write_report
from engine.metrics.classification import classification_report

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("pool_evaluations", REPO / "benchmarks" / "pool_evaluations.py")
pool_evaluations = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = pool_evaluations
SPEC.loader.exec_module(pool_evaluations)

STAGES = ["T1", "T2", "T3"]
LABELS = {"tumour": 1}


def _evaluation(folder: Path, probs: list[list[float]], truth: list[str], stages=STAGES) -> Path:
    cases = []
    for i, (p, t) in enumerate(zip(probs, truth)):
        ref = np.zeros((3, 6, 6), np.uint8)
        ref[1, 1:4, 1:4] = 1
        pred = np.zeros_like(ref)
        pred[1, 1:4, 1:1 + i % 3 + 1] = 1          # a different Dice per case
        cases.append(evaluate_case(f"case_{i}", pred, ref, (1.0, 1.0, 1.0), LABELS, t, dict(zip(stages, p))))
    write_report(summarize(cases, stages, {"task": "esophagus"}), folder)
    return folder


def test_pooled_report_is_the_report_of_all_cases_together(tmp_path, capsys):
    pa = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]]
    pb = [[0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3]]
    ta, tb = ["T1", "T2", "T3", "T2"], ["T1", "T3", "T2"]
    a = _evaluation(tmp_path / "a", pa, ta)
    b = _evaluation(tmp_path / "b", pb, tb)
    out = tmp_path / "pooled"
    assert pool_evaluations.main([f"s1={a}", f"s2={b}", "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert data["n_cases"] == 7
    ids = [c["case_id"] for c in data["cases"]]
    assert ids == [f"s1/case_{i}" for i in range(4)] + [f"s2/case_{i}" for i in range(3)]
    y = [STAGES.index(t) for t in ta + tb]
    expected = classification_report(np.array(y), np.array(pa + pb), STAGES)
    assert data["classification"]["macro"]["auc"] == pytest.approx(expected.macro.auc)
    dice = [c["structures"]["tumour"]["dice"] for c in data["cases"]]
    assert data["structures"][0]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert [s["n_cases"] for s in data["segmentation_by_stage"]] == [2, 3, 2]
    assert "7 cases, macro AUC" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "metrics.md", "roc.png"}
    # an existing report is kept unless --overwrite
    before = (out / "metrics.json").read_bytes()
    assert pool_evaluations.main([f"s1={a}", "--out", str(out)]) == 2
    assert (out / "metrics.json").read_bytes() == before
    assert pool_evaluations.main([f"s1={a}", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n_cases"] == 4


def test_sets_of_other_stages_or_unnamed_sets_are_refused(tmp_path, capsys):
    a = _evaluation(tmp_path / "a", [[0.6, 0.4], [0.3, 0.7]], ["T1", "T2"], stages=["T1", "T2"])
    b = _evaluation(tmp_path / "b", [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], ["T1", "T2"])
    assert pool_evaluations.main([f"a={a}", f"b={b}", "--out", str(tmp_path / "o")]) == 2
    assert "has stages" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        pool_evaluations.main([f"a={a}", f"a={b}", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        pool_evaluations.main([str(a), "--out", str(tmp_path / "o")])
