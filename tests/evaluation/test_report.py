"""Evaluation report: values against hand counts / scikit-learn / SciPy, files, overwrite refusal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats
from sklearn.metrics import roc_auc_score

from engine.errors import EngineError
from engine.evaluation import (
    REPORT_FILES,
    CaseEvaluation,
    EvaluationReport,
    evaluate_case,
    read_cases,
    summarize,
    write_report,
)
from engine.metrics import MetricInputError

SHAPE = (4, 12, 12)
SPACING = (2.0, 1.0, 1.0)            # 2 mm³ per voxel
VOXEL_CM3 = 2.0 / 1000.0
LABELS = {"tumour": 1, "esophagus": 2}
STAGES = ["T1", "T2", "T3"]

# Per case: tumour box edge (ref), x-shift of the predicted tumour (None: no predicted tumour),
# predicted esophagus height (ref is 4 slices), stage, probabilities.
CASE_SPECS = [
    ("c0", 2, 0, 4, "T1", [0.7, 0.2, 0.1]),
    ("c1", 3, 1, 3, "T1", [0.4, 0.5, 0.1]),
    ("c2", 4, 1, 4, "T2", [0.2, 0.6, 0.2]),
    ("c3", 3, 2, 2, "T2", [0.3, 0.3, 0.4]),
    ("c4", 5, 1, 4, "T3", [0.1, 0.2, 0.7]),
    ("c5", 2, None, 3, "T3", [0.2, 0.1, 0.7]),
]


def _maps(edge: int, shift: int | None, eso_height: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    ref[1:3, 1:1 + edge, 1:1 + edge] = 1
    if shift is not None:
        pred[1:3, 1:1 + edge, 1 + shift:1 + edge + shift] = 1
    ref[0:4, 8:11, 8:11] = 2
    pred[0:eso_height, 8:11, 8:11] = 2
    return pred, ref


def _hand_dice(p: np.ndarray, r: np.ndarray) -> float:
    total = int(p.sum() + r.sum())
    return 1.0 if total == 0 else 2.0 * int((p & r).sum()) / total


def _hand_iou(p: np.ndarray, r: np.ndarray) -> float:
    union = int((p | r).sum())
    return 1.0 if union == 0 else int((p & r).sum()) / union


@pytest.fixture(scope="module")
def cases_and_maps() -> tuple[list[CaseEvaluation], dict[str, tuple[np.ndarray, np.ndarray]]]:
    cases, maps = [], {}
    for cid, edge, shift, eso, stage, probs in CASE_SPECS:
        pred, ref = _maps(edge, shift, eso)
        maps[cid] = (pred, ref)
        cases.append(evaluate_case(cid, pred, ref, SPACING, LABELS, stage_true=stage,
                                   stage_probabilities=dict(zip(STAGES, probs))))
    return cases, maps


@pytest.fixture(scope="module")
def report(cases_and_maps) -> EvaluationReport:
    cases, _ = cases_and_maps
    return summarize(cases, STAGES, {"task": "esophagus", "model_id": "nn-transec", "model_version": "1.0",
                                     "dataset": "synthetic"})


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(report, out)


# --- per case and summaries -----------------------------------------------------------------------

def test_evaluate_case_hand_values(cases_and_maps):
    cases, _ = cases_and_maps
    c1 = cases[1]  # tumour 2×3×3 boxes shifted by 1 voxel in x: overlap 2×3×2 = 12 of 18 + 18
    t = c1.structures["tumour"]
    assert t.dice == pytest.approx(24 / 36, rel=1e-6)
    assert t.iou == pytest.approx(12 / 24, rel=1e-6)
    assert t.pred_volume_cm3 == pytest.approx(18 * VOXEL_CM3)
    assert t.ref_volume_cm3 == pytest.approx(18 * VOXEL_CM3)
    assert c1.stage_predicted == "T2"
    empty = cases[5].structures["tumour"]
    assert empty.dice == 0.0 and math.isnan(empty.hd95_mm) and math.isnan(empty.assd_mm)


def test_segmentation_summary_matches_hand_means(report, cases_and_maps):
    cases, maps = cases_and_maps
    assert report.n_cases == 6 and report.metadata["n_cases"] == 6
    for name, value in LABELS.items():
        hand_dice = [_hand_dice(p == value, r == value) for p, r in maps.values()]
        hand_iou = [_hand_iou(p == value, r == value) for p, r in maps.values()]
        s = report.structure(name)
        assert s.label == value and s.n_cases == 6
        assert s.dice.mean == pytest.approx(np.mean(hand_dice), rel=1e-6)
        assert s.dice.std == pytest.approx(np.std(hand_dice, ddof=1), rel=1e-5)
        assert s.dice.median == pytest.approx(np.median(hand_dice), rel=1e-6)
        assert s.iou.mean == pytest.approx(np.mean(hand_iou), rel=1e-6)
        assert s.dice.n_undefined == 0
    # The empty prediction leaves HD95/ASSD undefined in one case: the summary is over the other five.
    tumour = report.structure("tumour")
    hd = np.array([c.structures["tumour"].hd95_mm for c in cases])
    assert tumour.hd95_mm.n == 5 and tumour.hd95_mm.n_undefined == 1
    assert tumour.hd95_mm.mean == pytest.approx(np.nanmean(hd))
    assert tumour.assd_mm.n_undefined == 1
    assert report.structure("esophagus").hd95_mm.n_undefined == 0
    assert any("undefined" in n and "c5" in n for n in report.notes)


def test_segmentation_by_stage_matches_hand_means(report, cases_and_maps):
    _, maps = cases_and_maps
    assert [st.stage for st in report.segmentation_by_stage] == STAGES
    for stage in STAGES:
        ids = [spec[0] for spec in CASE_SPECS if spec[4] == stage]
        st = report.stratum(stage)
        assert st.case_ids == ids and st.n_cases == len(ids) == 2
        for name, value in LABELS.items():
            s = next(x for x in st.structures if x.name == name)
            hand = [_hand_dice(maps[i][0] == value, maps[i][1] == value) for i in ids]
            assert s.n_cases == 2 and s.dice.mean == pytest.approx(np.mean(hand), rel=1e-6)
            assert s.dice.std == pytest.approx(np.std(hand, ddof=1), rel=1e-5)
            voxels = [int((maps[i][0] == value).sum()) for i in ids]
            assert s.pred_volume_cm3.mean == pytest.approx(np.mean(voxels) * VOXEL_CM3)
    # T3 holds the case with no predicted tumour: its HD95 is over the one other case.
    t3 = next(x for x in report.stratum("T3").structures if x.name == "tumour")
    assert t3.hd95_mm.n == 1 and t3.hd95_mm.n_undefined == 1
    with pytest.raises(KeyError):
        report.stratum("T4")


def test_segmentation_by_stage_orders_unknown_stages_after_known_and_notes_unstaged(cases_and_maps):
    cases, maps = cases_and_maps
    extra = [evaluate_case("c7", *maps["c0"], SPACING, LABELS, stage_true="T0"),
             evaluate_case("c8", *maps["c1"], SPACING, LABELS)]
    rep = summarize([extra[0], *cases, extra[1]], STAGES, {})
    assert [st.stage for st in rep.segmentation_by_stage] == STAGES + ["T0"]
    assert sum(st.n_cases for st in rep.segmentation_by_stage) == 7
    assert any("Segmentation by stage: 1 case(s) without a reference stage" in n for n in rep.notes)


def test_stage_classification_matches_sklearn(report):
    cls = report.classification
    assert cls is not None and cls.class_names == STAGES and cls.n == 6
    y = np.array([STAGES.index(s[4]) for s in CASE_SPECS])
    p = np.array([s[5] for s in CASE_SPECS])
    per_class = [roc_auc_score(y == k, p[:, k]) for k in range(3)]
    for c, auc in zip(cls.per_class, per_class):
        assert c.auc == pytest.approx(auc, abs=1e-9)
    assert cls.macro.auc == pytest.approx(np.mean(per_class), abs=1e-9)
    assert cls.macro.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-9)
    assert cls.confusion_matrix == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert cls.accuracy == pytest.approx(4 / 6)
    assert cls.macro.precision == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert cls.macro.sensitivity == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_volume_agreement_matches_hand_values(report, cases_and_maps):
    _, maps = cases_and_maps
    for name, value in LABELS.items():
        pred = np.array([(p == value).sum() * VOXEL_CM3 for p, _ in maps.values()])
        ref = np.array([(r == value).sum() * VOXEL_CM3 for _, r in maps.values()])
        va = report.agreement(name)
        d = pred - ref
        assert va.n == 6
        assert va.bland_altman.mean_difference == pytest.approx(d.mean(), abs=1e-12)
        assert va.bland_altman.upper_limit == pytest.approx(d.mean() + 1.96 * d.std(ddof=1), abs=1e-12)
        assert va.bland_altman.lower_limit == pytest.approx(d.mean() - 1.96 * d.std(ddof=1), abs=1e-12)
        if np.ptp(ref) > 0:
            r, pval = stats.pearsonr(pred, ref)
            assert va.pearson.r == pytest.approx(r) and va.pearson.p_value == pytest.approx(pval)
    # Reference esophagus volume is the same in every case: r undefined, noted, Bland–Altman still there.
    eso = report.agreement("esophagus")
    assert math.isnan(eso.pearson.r) and eso.note and "constant" in eso.note
    assert eso.bland_altman.mean_difference < 0


# --- files ----------------------------------------------------------------------------------------

def test_metrics_json_round_trips_with_null_for_nan(written, report):
    out, paths = written
    assert set(paths) == set(REPORT_FILES) and all(p.parent == out for p in paths.values())
    text = paths["json"].read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["metadata"]["task"] == "esophagus" and data["n_cases"] == 6
    assert [c["case_id"] for c in data["cases"]] == [s[0] for s in CASE_SPECS]
    c5 = data["cases"][5]
    assert c5["structures"]["tumour"]["hd95_mm"] is None and c5["structures"]["tumour"]["dice"] == 0.0
    assert c5["stage_true"] == "T3" and c5["stage_predicted"] == "T3"
    tumour = next(s for s in data["structures"] if s["name"] == "tumour")
    assert tumour["dice"]["mean"] == pytest.approx(report.structure("tumour").dice.mean)
    assert tumour["hd95_mm"]["n_undefined"] == 1
    assert data["classification"]["macro"]["auc"] == pytest.approx(report.classification.macro.auc)
    eso = next(v for v in data["volume_agreement"] if v["name"] == "esophagus")
    assert eso["pearson"]["r"] is None
    t3 = data["segmentation_by_stage"][2]
    assert t3["stage"] == "T3" and t3["case_ids"] == ["c4", "c5"]
    assert t3["structures"][0]["hd95_mm"]["n_undefined"] == 1
    assert t3["structures"][0]["dice"]["mean"] == pytest.approx(report.stratum("T3").structures[0].dice.mean)
    assert not list(out.glob(".*.tmp"))


def test_metrics_md_tables(written):
    _, paths = written
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| Structure | n | Dice | IoU | HD95 (mm) | ASSD (mm) |" in md
    assert "| tumour | 6 |" in md and "| esophagus | 6 |" in md
    assert "(1 undef.)" in md
    assert "AUC (95 % CI)" in md and "| **Macro** | 6 |" in md
    assert "| T1 | 2 |" in md and "Accuracy: 0.667" in md
    assert "| T1 | 1 | 1 | 0 |" in md and "| T3 | 0 | 0 | 2 |" in md  # confusion matrix rows
    assert "r (p)" in md and "95 % limits (cm³)" in md
    assert "## Segmentation by reference stage" in md
    # c0 (tumour Dice 1) and c1 (24/36); the esophagus 1 and 2·27/(36+27)
    assert f"| T1 | 2 | {np.mean([1, 24 / 36]):.3f} ± {np.std([1, 24 / 36], ddof=1):.3f} |" in md
    assert "| T1 | 2 | 0.03 / 0.03 |" in md  # mean predicted / reference tumour volume: 13 voxels of 2 mm³
    assert "nan" not in md.lower().replace("n/a", "")


@pytest.mark.parametrize("key", ["roc", "bland_altman"])
def test_pngs_are_real_images(written, key):
    _, paths = written
    img = imread(paths[key])
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 300
    rgb = img[..., :3].reshape(-1, 3)
    assert np.ptp(rgb, axis=0).max() > 0.5                       # not one colour
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 10  # curves/points, not a blank frame


def test_bland_altman_has_one_panel_per_structure(written):
    _, paths = written
    img = imread(paths["bland_altman"])
    assert img.shape[1] > 1.8 * img.shape[0]  # two panels side by side


def test_refuses_to_overwrite_and_leaves_files_untouched(report, tmp_path):
    paths = write_report(report, tmp_path)
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in paths.items()}
    with pytest.raises(EngineError, match="already exists.*overwrite"):
        write_report(report, tmp_path)
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in paths.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES.values())
    again = write_report(report, tmp_path, overwrite=True)
    assert set(again) == set(REPORT_FILES)
    assert json.loads(again["json"].read_text(encoding="utf-8")) == json.loads(before["json"][0])


def test_report_without_stages_omits_stage_section(cases_and_maps, report, tmp_path):
    cases, maps = cases_and_maps
    plain = [evaluate_case(cid, *maps[cid], SPACING, LABELS) for cid in maps]
    rep = summarize(plain, None, {"task": "esophagus"})
    assert rep.classification is None and rep.stage_names is None
    assert not any("stage" in n.lower() for n in rep.notes)
    # Same segmentation numbers as with stages.
    assert rep.structure("tumour").dice.mean == report.structure("tumour").dice.mean
    # A stale stage report in the folder is replaced as a whole with overwrite: no leftover roc.png.
    write_report(report, tmp_path)
    paths = write_report(rep, tmp_path, overwrite=True)
    assert set(paths) == {"json", "markdown", "bland_altman"}
    assert not (tmp_path / "roc.png").exists()
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "Stage classification" not in md and "Macro" not in md and "Confusion" not in md
    assert "## Segmentation" in md and "## Volume agreement" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["classification"] is None
    assert rep.segmentation_by_stage == [] and "by reference stage" not in md


def test_too_few_cases_skip_volume_agreement(cases_and_maps, tmp_path):
    cases, _ = cases_and_maps
    rep = summarize(cases[:2], STAGES, {})
    for va in rep.volume_agreement:
        assert va.pearson is None and va.bland_altman is None and "at least 3" in va.note
    paths = write_report(rep, tmp_path)
    assert "bland_altman" not in paths and not (tmp_path / "bland_altman.png").exists()
    assert "| tumour | 2 | n/a | n/a | n/a |" in paths["markdown"].read_text(encoding="utf-8")


def test_partial_stages_are_left_out_with_a_note(cases_and_maps):
    cases, maps = cases_and_maps
    extra = evaluate_case("c6", *maps["c0"], SPACING, LABELS, stage_true="T2")  # no probabilities
    rep = summarize(list(cases) + [extra], None, {})
    assert rep.stage_names == STAGES and rep.classification.n == 6 and rep.n_cases == 7
    assert any("c6" in n and "no stage probabilities" in n for n in rep.notes)


def test_inconsistent_inputs_are_clear_errors(cases_and_maps):
    cases, maps = cases_and_maps
    bad_stage = evaluate_case("x", *maps["c0"], SPACING, LABELS, stage_true="T4",
                              stage_probabilities=dict(zip(STAGES, [0.2, 0.3, 0.5])))
    with pytest.raises(MetricInputError, match="T4"):
        summarize([*cases, bad_stage], STAGES, {})
    bad_keys = evaluate_case("y", *maps["c0"], SPACING, LABELS, stage_true="T1",
                             stage_probabilities={"T1": 0.5, "T2": 0.5})
    with pytest.raises(MetricInputError, match="expected exactly"):
        summarize([*cases, bad_keys], STAGES, {})
    other = evaluate_case("z", *maps["c0"], SPACING, {"tumour": 1})
    with pytest.raises(MetricInputError, match="different structures"):
        summarize([*cases, other], STAGES, {})
    with pytest.raises(MetricInputError, match="more than once"):
        summarize([cases[0], cases[0]], None, {})
    with pytest.raises(MetricInputError, match="No cases"):
        summarize([], None, {})
    assert isinstance(MetricInputError("x"), EngineError)


def test_saved_cases_read_back_summarise_to_the_same_report(written, report):
    _, paths = written
    cases, stage_names = read_cases(paths["json"])
    assert stage_names == STAGES and [c.case_id for c in cases] == [s[0] for s in CASE_SPECS]
    assert math.isnan(cases[5].structures["tumour"].hd95_mm)          # JSON null back to NaN
    again = summarize(cases, stage_names, report.metadata)
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(report.to_dict(), sort_keys=True)


def test_reading_cases_from_a_wrong_file_says_what_to_give(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"n_cases": 3}')
    with pytest.raises(EngineError, match="metrics.json that 'python -m engine evaluate' wrote"):
        read_cases(bad)
    with pytest.raises(EngineError, match="Cannot read"):
        read_cases(tmp_path / "missing.json")


def _with_members(cases: list[CaseEvaluation]) -> tuple[list[CaseEvaluation], np.ndarray]:
    """The cases as an ensemble of two would give them: member 1 perfect-ish, member 2 the reverse."""
    p = np.array([s[5] for s in CASE_SPECS])
    second = 2 * p - p[:, ::-1]
    second = np.clip(second, 0.05, None)
    second /= second.sum(axis=1, keepdims=True)
    first = 2 * p - second
    members = np.stack([first, second], axis=1)            # case, member, stage; mean over members = p
    out = [CaseEvaluation(c.case_id, c.structures, c.stage_true, c.stage_probabilities,
                          [dict(zip(STAGES, m)) for m in members[i]]) for i, c in enumerate(cases)]
    return out, members


def test_ensemble_members_are_each_classified_on_the_same_cases(cases_and_maps, tmp_path):
    cases, _ = cases_and_maps
    with_members, members = _with_members(cases)
    assert np.all(members >= 0) and np.allclose(members.mean(axis=1), [s[5] for s in CASE_SPECS])
    report = summarize(with_members, STAGES)
    y = np.array([STAGES.index(s[4]) for s in CASE_SPECS])
    assert len(report.member_classification) == 2
    for k, member in enumerate(report.member_classification):
        expected = roc_auc_score(y, members[:, k], multi_class="ovr", average="macro")
        assert member.macro.auc == pytest.approx(expected, abs=1e-9)
        assert member.accuracy == pytest.approx(np.mean(members[:, k].argmax(1) == y))
    aucs = [m.macro.auc for m in report.member_classification]
    assert aucs[0] != pytest.approx(aucs[1])
    assert summarize(cases, STAGES).member_classification == []       # a single model has no members
    paths = write_report(report, tmp_path / "out")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "### Ensemble members" in md and "| member 2 | 6 |" in md and "| **ensemble** | 6 |" in md
    again, names = read_cases(paths["json"])
    for read, given in zip(again[0].member_stage_probabilities, with_members[0].member_stage_probabilities):
        assert read == pytest.approx(given)
    pooled = summarize(again, names)
    assert pooled.member_classification[1].macro.auc == pytest.approx(aucs[1])
    mixed = summarize(with_members[:3] + cases[3:], STAGES)
    assert mixed.member_classification == [] and any("different numbers of member" in n for n in mixed.notes)
