"""Fingerprint and plan: heuristics checked against hand-computed values, phantoms and real CT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.data.dataset import RawDataset
from engine.errors import PlanError
from engine.planning import Plan, extract_fingerprint, make_plan
from engine.planning.planner import (
    krt_box_size,
    network_topology,
    patch_size_for,
    stage_loss_weights,
    target_spacing,
    transfer_plan,
)
from tests.conftest import shared_data


def test_topology_reproduces_paper_table6():
    topo, patch = network_topology([128, 64, 64], [1.0, 0.73, 0.73], 320)
    assert patch == [128, 64, 64]
    assert topo.num_stages == 5
    assert topo.strides[1:] == [[2, 2, 2]] * 4
    assert topo.kernel_sizes == [[3, 3, 3]] * 5


def test_topology_for_thick_slices_uses_in_plane_kernels_first():
    topo, patch = network_topology([21, 224, 224], [6.0, 0.4688, 0.4688], 320)
    assert topo.kernel_sizes[0] == [1, 3, 3]
    assert topo.strides[1] == [1, 2, 2]             # slices are not pooled while they are much thicker
    assert all(p % t == 0 for p, t in zip(patch, topo.total_stride))


def test_target_spacing_median_and_anisotropic_rule():
    sp = np.array([[1.0, 0.7, 0.7], [1.0, 0.8, 0.8], [2.0, 0.75, 0.75]])
    assert target_spacing(sp) == [1.0, 0.75, 0.75]
    thick = np.array([[5.0, 0.5, 0.5], [5.0, 0.5, 0.5], [3.0, 0.5, 0.5], [5.0, 0.5, 0.5]] * 3)
    assert target_spacing(thick)[0] == pytest.approx(np.percentile(thick[:, 0], 10))


def test_patch_fits_budget_and_shrinks_longest_axis():
    patch = patch_size_for([237, 256, 256], [1.0, 0.73, 0.73], 128 * 64 * 64)
    assert np.prod(patch) <= 128 * 64 * 64
    assert patch_size_for([40, 48, 48], [1, 1, 1], 10**6) == [40, 48, 48]  # small image: whole image


def test_krt_box_covers_every_tumour_and_divides_by_2_pow_depth():
    extents = np.array([[30.2, 20.0, 17.0], [95.0, 41.0, 12.0]])
    box = krt_box_size(extents, depth=5)
    assert box == [96, 64, 32]
    assert all(b % 32 == 0 for b in box) and np.all(np.array(box) >= extents.max(axis=0))


def test_stage_weights_inverse_frequency():
    w = stage_loss_weights({"T1": 17, "T2": 19, "T3": 54, "T4": 10}, ["T1", "T2", "T3", "T4"])
    inv = 1 / np.array([17, 19, 54, 10])
    np.testing.assert_allclose(w, inv / inv.sum(), atol=1e-6)
    assert w[3] > w[0] > w[1] > w[2]   # same ordering as the paper's [0.20, 0.16, 0.10, 0.54]
    assert sum(w) == pytest.approx(1.0)


def test_plan_from_dataset_records_everything(blob_dataset, tmp_path):
    ds = RawDataset.load(blob_dataset)
    fp = extract_fingerprint(ds)
    assert fp.tumour_label == "EC"
    assert fp.stage_counts == {"T1": 2, "T2": 2, "T3": 1, "T4": 1}
    # tumour extents by hand: case i has (3 + i%4) slices × (3 + i%4) rows × (4 + i%4) cols
    ext = fp.tumour_extents_mm
    assert ext.max(axis=0).tolist() == [6 * 2.0, 6 * 1.5, 7 * 1.5]
    plan = make_plan(fp, "esophagus")
    full = plan.configuration("3d_fullres")
    assert full.spacing == [2.0, 1.5, 1.5]
    assert full.median_shape == [24, 32, 32]
    assert set(plan.configurations) == {"3d_fullres", "3d_lowres"}
    assert plan.configuration("3d_lowres").spacing == [4.0, 3.0, 3.0]
    assert plan.normalization.scheme == "ct"
    lo, hi = plan.normalization.clip
    assert -100 < lo < hi < 200           # foreground (labelled) voxels are soft tissue, 40-70 HU
    assert plan.krt_box_size is not None and all(b % 2 ** full.network.num_stages == 0 for b in plan.krt_box_size)
    assert plan.stage_loss_weights[2] == max(plan.stage_loss_weights)   # T3 and T4 rarest here (1 case each)
    assert plan.labels == {"background": 0, "EC": 1, "aorta": 2}
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()


def test_transfer_plan_keeps_the_networks_and_takes_the_new_datas_intensities(blob_dataset):
    fp = extract_fingerprint(RawDataset.load(blob_dataset))
    source = make_plan(fp, "esophagus", spacing=(4.0, 3.0, 3.0))
    # the new dataset: 150 HU brighter (an enhanced phase, say) and another stage mix
    stats = {k: v + 150.0 if k != "std" else v for k, v in fp.foreground_intensity.items()}
    new = dataclasses.replace(fp, dataset_name="Enhanced", foreground_intensity=stats,
                              stage_counts={"T1": 1, "T2": 1, "T3": 5, "T4": 1})
    moved = transfer_plan(source, new)
    assert moved.configurations == source.configurations and moved.krt_box_size == source.krt_box_size
    assert moved.labels == source.labels and moved.stage_names == source.stage_names
    np.testing.assert_allclose(moved.normalization.clip, np.array(source.normalization.clip) + 150.0)
    assert moved.normalization.mean == pytest.approx(source.normalization.mean + 150.0)
    assert moved.normalization.std == pytest.approx(source.normalization.std)
    assert moved.dataset_name == "Enhanced" and moved.stage_counts["T3"] == 5
    assert moved.stage_loss_weights == stage_loss_weights(new.stage_counts, source.stage_names)
    assert Plan.from_dict(moved.to_dict()).to_dict() == moved.to_dict()
    with pytest.raises(PlanError, match="same modality"):
        transfer_plan(source, dataclasses.replace(fp, modality="MR"))


def test_plan_task_specific_choices(blob_dataset):
    fp = extract_fingerprint(RawDataset.load(blob_dataset))
    npc = make_plan(fp, "npc").configuration("3d_fullres")
    assert npc.spacing == [6.0, 0.4688, 0.4688]
    gtv = make_plan(fp, "gtv")
    assert set(gtv.configurations) == {"2d"} and gtv.configuration("2d").patch_size == [512, 512]
    assert make_plan(fp, "pet").configuration("3d_fullres").spacing == [2.0, 2.0, 2.0]
    with pytest.raises(PlanError, match="Unknown task"):
        make_plan(fp, "liver")


def test_invalid_plan_file(tmp_path):
    (tmp_path / "p.json").write_text('{"format_version": 1}')
    with pytest.raises(PlanError, match="Invalid plan"):
        Plan.load(tmp_path / "p.json")
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "missing.json")


@pytest.mark.realdata
def test_plan_on_real_openkbp_ct(tmp_path):
    from engine.data.importers import import_openkbp

    src = shared_data("openkbp", "train")
    ds = import_openkbp(src, tmp_path / "kbp", cases=6)
    assert ds.description.labels["Esophagus"] == 5 and "PTV70" not in ds.description.labels
    fp = extract_fingerprint(ds)
    spacings = np.array([c.spacing for c in fp.cases])
    plan = make_plan(fp, "esophagus")
    full = plan.configuration("3d_fullres")
    np.testing.assert_allclose(full.spacing, np.median(spacings, axis=0), rtol=1e-5)
    assert plan.normalization.scheme == "ct"
    lo, hi = plan.normalization.clip
    assert -1024 <= lo < 0 < hi <= 3000      # organs span fat to mandible bone
    assert np.prod(full.patch_size) <= 128 * 64 * 64 * 1.2
    assert all(p % t == 0 for p, t in zip(full.patch_size, full.network.total_stride))
    assert plan.krt_box_size is None          # organs only: no tumour label
    assert plan.stage_loss_weights is None
    assert fp.class_fractions["background"] > 0.9


def test_cascade_plan_records_the_full_resolution_region_margin(blob_dataset):
    from engine.planning.planner import roi_margin_mm

    plan = make_plan(extract_fingerprint(RawDataset.load(blob_dataset)), "esophagus")
    full, low = plan.configuration("3d_fullres"), plan.configuration("3d_lowres")
    half_box = [b / 2 * s for b, s in zip(plan.krt_box_size, full.spacing)]
    # half the KRT box (it covers the largest tumour) plus one low-resolution voxel
    assert plan.roi_margin_mm == pytest.approx([h + s for h, s in zip(half_box, low.spacing)])
    older = Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "roi_margin_mm"})
    assert older.roi_margin_mm is None and roi_margin_mm(older) == pytest.approx(plan.roi_margin_mm)
