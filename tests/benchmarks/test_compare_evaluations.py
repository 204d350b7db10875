"""benchmarks/compare_evaluations.py: paired comparison of staging results on hand-made evaluations."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("compare_evaluations", REPO / "benchmarks" / "compare_evaluations.py")
compare = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = compare  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(compare)

STAGES = ["T1", "T2", "T3", "T4"]
TRUTH = ["T1", "T1", "T2", "T2", "T3", "T3", "T4", "T4"]


def _write(folder: Path, predicted: list[str], ids=None) -> Path:
    """An evaluate output whose probabilities put 0.7 on ``predicted`` and 0.1 elsewhere."""
    cases = [{"case_id": cid, "stage_true": t, "stage_predicted": p,
              "stage_probabilities": {s: 0.7 if s == p else 0.1 for s in STAGES}}
             for cid, t, p in zip(ids or [f"c{i}" for i in range(len(TRUTH))], TRUTH, predicted)]
    acc = sum(c["stage_true"] == c["stage_predicted"] for c in cases) / len(cases)
    summary = {"accuracy": acc, "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0,
               "macro": {"auc": 0.0, "auc_ci_low": 0.0, "auc_ci_high": 1.0}}
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"stage_names": STAGES, "cases": cases,
                                                     "classification": summary}))
    return folder


def test_paired_difference_and_mcnemar_against_the_reference(tmp_path, capsys):
    perfect = _write(tmp_path / "perfect", TRUTH)
    worse = _write(tmp_path / "worse", ["T2", "T2", "T1", "T1", "T3", "T3", "T4", "T4"])  # T1/T2 swapped
    assert compare.main([f"ref={perfect}", f"worse={worse}", "--bootstrap", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("| ref |") and lines[2].endswith("— | — |")
    row = lines[3].split("|")
    # by hand: for T1 the two T1 cases score 0.1 and tie with the four T3/T4 cases (0.1) and lose to
    # the two T2 cases (0.7): AUC = 0.5·8/12 = 1/3; T2 likewise; T3 and T4 stay 1 → macro 2/3, Δ = −1/3
    assert float(row[4].split("(")[0]) == pytest.approx(-1 / 3, abs=5e-4)
    # McNemar: 4 cases right only for the reference, none only for the other → exact p = 2·0.5⁴
    assert float(row[5]) == pytest.approx(0.125, abs=1e-3)


def test_runs_on_different_cases_are_refused(tmp_path):
    a = _write(tmp_path / "a", TRUTH)
    b = _write(tmp_path / "b", TRUTH, ids=[f"other{i}" for i in range(len(TRUTH))])
    with pytest.raises(SystemExit, match="same cases"):
        compare.main([f"a={a}", f"b={b}"])


def test_an_ensemble_member_is_compared_on_its_own_probabilities(tmp_path, capsys):
    ensemble = _write(tmp_path / "ensemble", TRUTH)
    swapped = ["T2", "T2", "T1", "T1", "T3", "T3", "T4", "T4"]
    metrics = json.loads((ensemble / "metrics.json").read_text(encoding="utf-8"))
    for case, wrong in zip(metrics["cases"], swapped):
        case["member_stage_probabilities"] = [
            case["stage_probabilities"], {s: 0.7 if s == wrong else 0.1 for s in STAGES}]
    member_summary = {**metrics["classification"], "accuracy": 0.5}
    metrics["member_classification"] = [metrics["classification"], member_summary]
    (ensemble / "metrics.json").write_text(json.dumps(metrics))

    assert compare.main([f"ens={ensemble}", f"second={ensemble}#2", "--bootstrap", "50"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[3].split("|")
    assert row[3].strip().startswith("0.500")  # the member's own summary, not the ensemble's
    assert float(row[4].split("(")[0]) == pytest.approx(-1 / 3, abs=5e-4)  # as the swapped run above
    with pytest.raises(SystemExit, match="2 ensemble member"):
        compare.main([f"ens={ensemble}", f"third={ensemble}#3"])


def _add_dice(folder: Path, ec: list[float | None], aorta: float = 0.9) -> None:
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    for case, d in zip(metrics["cases"], ec):
        case["structures"] = {"EC": {"dice": d}, "aorta": {"dice": aorta}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_paired_dice_per_structure_against_the_reference(tmp_path, capsys):
    ref, new = _write(tmp_path / "ref", TRUTH), _write(tmp_path / "new", TRUTH)
    _add_dice(ref, [0.5] * 7 + [None])  # the last case: both masks empty, Dice undefined
    _add_dice(new, [0.7, 0.7, 0.7, 0.7, 0.5, 0.5, 0.4, None])
    assert compare.main([f"ref={ref}", f"new={new}", "--bootstrap", "200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines.index("| variant | Dice EC | Dice aorta | Dice mean over structures |")
    assert lines[header + 2] == "| ref | 0.500 | 0.900 | 0.725 |"  # mean over structures: (7·0.7 + 0.9)/8
    ec = lines[header + 3].split("|")[2]
    # by hand over the 7 defined cases: mean 4.2/7 = 0.600, Δ = (4·0.2 − 0.1)/7 = +0.100
    assert ec.startswith(" 0.600 (Δ +0.100, ") and ec.endswith("; 4 higher / 1 lower) ")
    lo, hi = (float(v) for v in ec.split(", ")[1].split(";")[0].split(" to "))
    assert -0.1 < lo < 0.1 < hi <= 0.2 + 1e-9


def test_no_dice_table_without_segmentation_scores(tmp_path, capsys):
    a, b = _write(tmp_path / "a", TRUTH), _write(tmp_path / "b", TRUTH)
    _add_dice(a, [0.5] * 8)  # only one of the two has them
    assert compare.main([f"a={a}", f"b={b}", "--bootstrap", "20"]) == 0
    assert "Dice" not in capsys.readouterr().out
