"""benchmarks/realdata_comparison.py: split, scoring and summary on hand-made cases, and one tiny
end-to-end run on OpenKBP-shaped synthetic patients (not timed; numbers checked for consistency)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.io.image import Image, write_image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "realdata_comparison.py"
SPEC = importlib.util.spec_from_file_location("realdata_comparison", SCRIPT)
okbp = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = okbp  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(okbp)


def test_holdout_split_is_seeded_disjoint_and_complete():
    ids = [f"openkbp_{i}" for i in range(1, 21)]
    a, b = okbp.holdout_split(ids, 0.2, seed=3), okbp.holdout_split(list(reversed(ids)), 0.2, seed=3)
    assert a == b  # the order the cases are listed in does not matter
    assert len(a.test) == 4 and len(a.train) == 16
    assert set(a.test).isdisjoint(a.train) and set(a.test) | set(a.train) == set(ids)
    assert okbp.holdout_split(ids, 0.2, seed=4).test != a.test
    with pytest.raises(ValueError, match="between 0 and 1"):
        okbp.holdout_split(ids, 1.0, seed=0)


def test_evaluate_case_scores_only_contoured_organs_against_hand_computed_dice():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:6, 2:6] = 1                      # organ A: 32 voxels
    pred = np.zeros_like(ref)
    pred[1:3, 2:6, 4:8] = 1                     # shifted by 2 voxels: overlap 16 → Dice 2·16/64 = 0.5
    pred[0, 0, 0] = 2                           # organ B predicted, but the reference has no B
    pred[3, 8:10, 8:10] = 3                     # organ C ...
    ref[3, 0:2, 0:2] = 3                        # ... contoured elsewhere: Dice 0
    scores = okbp.evaluate_case(pred, ref, (2.0, 1.0, 1.0), {"A": 1, "B": 2, "C": 3, "D": 4})
    assert set(scores) == {"A", "C"}            # B and D are not contoured in this patient
    assert scores["A"]["dice"] == pytest.approx(0.5)
    assert scores["A"]["hd95_mm"] == pytest.approx(2.0)  # the shift, in 1 mm columns
    assert scores["C"]["dice"] == 0.0 and scores["C"]["hd95_mm"] > 8.0
    empty = okbp.evaluate_case(np.zeros_like(ref), ref, (2.0, 1.0, 1.0), {"A": 1})
    assert empty["A"]["dice"] == 0.0 and math.isnan(empty["A"]["hd95_mm"])  # missed organ: no distance


def test_summary_pairs_cases_and_counts_missed_organs():
    def s(d, h):
        return {"dice": d, "hd95_mm": h}

    per_case = {"ours": {"c1": {"A": s(0.8, 2.0)}, "c2": {"A": s(0.6, 4.0), "B": s(0.5, 3.0)},
                         "c3": {"A": s(0.7, 6.0)}},
                "baseline": {"c1": {"A": s(0.7, 3.0)}, "c2": {"A": s(0.0, math.nan), "B": s(0.9, 1.0)},
                             "c3": {"A": s(0.5, 5.0)}}}
    summary = okbp.summarise(per_case, ["A", "B"])
    a = summary["A"]
    assert a["n"] == 3 and summary["B"]["n"] == 1
    assert a["ours"]["dice_mean"] == pytest.approx(0.7) and a["baseline"]["dice_mean"] == pytest.approx(0.4)
    assert a["ours"]["dice_sd"] == pytest.approx(0.1)
    assert a["ours"]["hd95_median_mm"] == 4.0 and a["baseline"]["hd95_median_mm"] == 4.0  # NaN left out
    assert a["baseline"]["missed"] == 1 and a["ours"]["missed"] == 0
    assert 0.0 < a["wilcoxon_p_dice"] <= 1.0 and "wilcoxon_p_dice" not in summary["B"]
    assert summary["mean_dice"]["ours"] == pytest.approx((0.7 + 0.5) / 2)
    assert summary["mean_dice"]["baseline"] == pytest.approx((0.4 + 0.9) / 2)
    result = {"summary": summary, "organs": ["A", "B"], "split": {"test": ["c1", "c2", "c3"], "train": ["t"]},
              "budget": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": [8, 8, 8],
                         "spacing_mm": [1.0, 1.0, 1.0]},
              "methods": {"ours": {"features": [8]}, "baseline": {"features": [32]}},
              "train_time_s": {"ours": 1.0, "baseline": 2.0}, "hardware": {"processor": "x", "torch_threads": 1}}
    rows = {line.split(" | ")[0]: line for line in okbp.markdown(result).splitlines()}
    assert rows["| A"].startswith("| A | 3 | 0.700 ± 0.100 | 0.400 ± ") and "| 4.0 | 4.0 | 0 / 1 |" in rows["| A"]
    # organ B: one case, so no SD and no test; undefined numbers read "n/a", never "nan"
    assert rows["| B"] == "| B | 1 | 0.500 ± n/a | 0.900 ± n/a | 3.0 | 1.0 | 0 / 0 | n/a |"


def test_dynunet_deep_supervision_outputs_become_a_list_in_training_only():
    from engine.models.nn_mtnet import NetworkSpec

    spec = NetworkSpec(1, 3, [4, 8, 8], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                       deep_supervision=4)
    net, desc = okbp.build_network("baseline", spec)
    assert desc["deep_supervision_outputs"] == 2  # capped by the depth: full resolution + one coarser
    x = torch.zeros(2, 1, 16, 16, 16)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 2 and all(o.shape == (2, 3, 16, 16, 16) for o in outs)
    assert net.eval()(x).shape == (2, 3, 16, 16, 16)
    ours, _ = okbp.build_network("ours", spec)
    assert len(ours.train()(x)) == 2
    loss, opt, sched = okbp.training_setup("baseline", 2)
    assert loss.weights == [1.0, 0.5] and opt.name == "sgd" and opt.nesterov and sched.name == "poly"


def test_baseline_keeps_nnunet_widths_unless_told():
    """nnU-Net's SGD recipe is only run at its own widths by default (docs/results.md: at 8 → 64 it does
    not leave the all-background start), whatever widths our network is narrowed to."""
    args = okbp.parse_args(["--out", "x", "--base-features", "8", "--max-features", "64"])
    assert args.baseline_features == [32, 320] and (args.base_features, args.max_features) == (8, 64)
    assert okbp.parse_args(["--out", "x", "--baseline-features", "8", "64"]).baseline_features == [8, 64]



def test_patch_loading_processes_reach_the_trainer(tmp_path):
    """--num-workers (for a GPU, where augmentation in the training process bounds the speed) is passed
    through; the default keeps loading in the training process, as the recorded CPU runs did."""
    default = okbp.parse_args(["--out", str(tmp_path)])
    assert okbp.engine_trainer_config(default, tmp_path, 2).num_workers == 0
    args = okbp.parse_args(["--out", str(tmp_path), "--num-workers", "6", "--epochs", "3"])
    cfg = okbp.engine_trainer_config(args, tmp_path, 2)
    assert cfg.num_workers == 6 and cfg.epochs == 3 and cfg.batch_size == 2

def _openkbp_like(root: Path, patients: int) -> Path:
    """pt_N/{ct,labels}.nii.gz with two box organs (1 Brainstem, 7 Mandible) in a soft-tissue body."""
    rng = np.random.default_rng(0)
    for n in range(1, patients + 1):
        ct = np.full((20, 24, 24), -1000.0, np.float32)
        ct[2:18, 3:21, 3:21] = 40.0 + rng.normal(0, 5, (16, 18, 18))
        lab = np.zeros(ct.shape, np.uint8)
        lab[5:10, 8:13, 8:13] = 1
        ct[5:10, 8:13, 8:13] += 60.0
        if n % 2:  # not every patient has every organ
            lab[12:16, 14:19, 6:12] = 7
            ct[12:16, 14:19, 6:12] = 700.0
        folder = root / f"pt_{n}"
        folder.mkdir(parents=True)
        write_image(Image(ct, (2.5, 4.0, 4.0), modality="CT"), folder / "ct.nii.gz")
        write_image(Image(lab, (2.5, 4.0, 4.0)), folder / "labels.nii.gz")
    return root


def test_tiny_end_to_end_run_writes_consistent_results(tmp_path):
    source = _openkbp_like(tmp_path / "openkbp", 6)
    out = tmp_path / "run"
    args = ["--source", str(source), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
            "--patch", "16", "16", "16", "--batch-size", "2", "--base-features", "4", "--max-features", "8",
            "--baseline-features", "2", "4", "--holdout", "0.34", "--device", "cpu", "--seed", "1"]
    # in pieces, as under a per-command time limit: stopped at once, resumed, one method at a time
    assert okbp.main(args + ["--methods", "ours", "--time-limit", "1e-9"]) == 3
    assert not (out / "work" / "ours" / okbp.FINAL_WEIGHTS).exists()
    assert okbp.main(args + ["--methods", "ours", "--resume"]) == 3  # ours done, baseline untrained
    assert (out / "work" / "ours" / okbp.FINAL_WEIGHTS).is_file() and not (out / "results.json").exists()
    ours_time = float((out / "work" / "ours" / okbp.TRAIN_TIME).read_text(encoding="utf-8"))
    assert okbp.main(args + ["--resume"]) == 0  # trains the baseline, reuses ours, scores
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["train_time_s"]["ours"] == pytest.approx(ours_time, abs=0.1)
    test, train = result["split"]["test"], result["split"]["train"]
    assert len(test) == 2 and len(train) == 4 and set(test).isdisjoint(train)
    assert result["budget"]["patch_size"] == [16, 16, 16]
    widths = {m: result["methods"][m]["features"] for m in okbp.METHODS}
    assert widths["ours"][:2] == [4, 8] and widths["baseline"][:2] == [2, 4]  # each method its own widths
    assert "widths ours [4, 8" in (out / "results.md").read_text(encoding="utf-8")
    for method in ("ours", "baseline"):
        assert set(result["per_case"][method]) == set(test)
        for scores in result["per_case"][method].values():
            assert "Brainstem" in scores and all(0.0 <= s["dice"] <= 1.0 for s in scores.values())
    with_mandible = sum(int(c.split("_")[-1]) % 2 for c in test)
    assert result["summary"]["Brainstem"]["n"] == 2 and result["summary"]["Mandible"]["n"] == with_mandible
    assert result["train_time_s"]["ours"] > 0 and result["train_time_s"]["baseline"] > 0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| Brainstem | 2 |" in table and "mean over organs" in table
    with pytest.raises(SystemExit, match="--overwrite"):  # a finished run is never replaced silently
        okbp.main(args)
    (out / "results.json").unlink()
    with pytest.raises(SystemExit, match=r"widths \[2, 4.*--baseline-features"):  # not reused at other widths
        okbp.main(args + ["--baseline-features", "4", "8", "--resume"])  # the last one given counts
    assert not (out / "results.json").exists()
    assert okbp.main(args + ["--methods", "baseline", "--overwrite"]) == 3  # starts over: ours is gone
    assert not (out / "results.json").exists() and not (out / "work" / "ours").exists()
