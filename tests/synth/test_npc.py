"""NPC MRI phantom (engine.synth.npc): T-stage by extension (nasopharynx → parapharyngeal space → skull base →
intracranial), MR intensities."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from engine.synth import generate_case, npc
from engine.synth.common import STAGES
from tests.synth._checks import dilate6, separability_auc

PER_STAGE = 6


@pytest.fixture(scope="module")
def cases():
    seeds: dict[str, list[int]] = {s: [] for s in STAGES}
    seed = 0
    while min(len(v) for v in seeds.values()) < PER_STAGE:
        stage = npc.draw_stage(seed)
        if len(seeds[stage]) < PER_STAGE:
            seeds[stage].append(seed)
        seed += 1
    return [generate_case("npc", s) for ss in seeds.values() for s in ss]


def test_stage_follows_extension(cases):
    seen = collections.Counter()
    for case in cases:
        m, stage = case.meta["masks"], case.targets.t_stage
        t = m["tumour"]
        assert np.array_equal(t, case.label.array == 1) and t.any()
        assert stage == case.meta["stage"]
        seen[stage] += 1
        intracranial = bool(np.any(t & m["intracranial"]))
        in_bone = bool(np.any(t & m["bone"]))
        outside = bool(np.any(t & ~m["nasopharynx"]))
        assert intracranial == (stage == "T4"), case.meta["seed"]
        if stage == "T3":
            assert in_bone, case.meta["seed"]
        if stage in ("T1", "T2"):
            assert not in_bone, case.meta["seed"]
        if stage == "T2":
            assert outside, case.meta["seed"]
        if stage == "T1":
            assert not outside, case.meta["seed"]      # confined to the nasopharynx
    assert set(seen) == set(STAGES), seen


def test_generator_builds_the_stage_it_draws(cases):
    assert np.mean([c.meta["stage"] == c.meta["stage_sampled"] for c in cases]) >= 0.9
    # parapharyngeal extension is what makes most T2 tumours T2
    t2 = [c for c in cases if c.meta["stage"] == "T2"]
    assert np.mean([c.meta["extends_to_pps"] for c in t2]) >= 0.5


def test_stage_mix_follows_the_cohort():
    n = 3000
    counts = collections.Counter(npc.draw_stage(s) for s in range(n))
    for stage, p in zip(STAGES, npc.STAGE_PROBABILITIES):
        assert abs(counts[stage] / n - p) < 0.03, (stage, counts[stage] / n)


def test_mr_intensities(cases):
    for case in cases[::4]:
        img, m = case.image.array, case.meta["masks"]
        assert case.image.modality == "MR"
        assert img.min() >= 0.0                                  # magnitude images: never negative, no HU
        assert img.max() < 5000.0
        assert case.image.spacing[0] == 6.0                      # thick slices like the paper
        fat = np.median(img[m["pps"]])
        tumour = np.median(img[m["tumour"]])
        bone = np.median(img[m["bone"]])
        assert fat > tumour > bone                               # T1: fat bright, cortical/clival bone dark


def test_tumour_overlaps_mucosa_intensity(cases):
    aucs = []
    for case in cases:
        img, m = case.image.array, case.meta["masks"]
        t = m["tumour"]
        mucosa = dilate6(dilate6(t)) & ~t & m["nasopharynx"]
        if mucosa.sum() >= 5:
            aucs.append(separability_auc(img[t], img[mucosa]))
    assert len(aucs) >= 10
    assert np.mean(aucs) < 0.85, aucs


def test_presets():
    assert npc.PRESETS["realistic"].shape == (21, 224, 224)
    assert npc.PRESETS["realistic"].spacing == (6.0, 0.4688, 0.4688)
