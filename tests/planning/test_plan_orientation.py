"""The plan names the orientation networks see; the fingerprint does not depend on voxel storage."""

from __future__ import annotations

import dataclasses

import pytest
import SimpleITK as sitk

from engine.data.dataset import RawDataset
from engine.errors import PlanError
from engine.planning import Plan, extract_fingerprint, make_plan
from engine.planning.planner import CANONICAL_ORIENTATION, transfer_plan


def test_plans_record_the_orientation_and_older_plans_mean_lps(blob_dataset, tmp_path):
    plan = make_plan(extract_fingerprint(RawDataset.load(blob_dataset)), "esophagus")
    assert plan.orientation == CANONICAL_ORIENTATION == "LPS"
    assert Plan.load(plan.save(tmp_path / "plan.json")).orientation == "LPS"
    older = plan.to_dict()
    del older["orientation"]                       # a plan or bundle written before the field existed
    assert Plan.from_dict(older).orientation == "LPS"
    assert Plan.from_dict({**plan.to_dict(), "orientation": "ras"}).orientation == "RAS"
    source = dataclasses.replace(plan, orientation="RAS")
    assert transfer_plan(source, extract_fingerprint(RawDataset.load(blob_dataset))).orientation == "RAS"


@pytest.mark.parametrize("code", ["XYZ", "LPL", 3])
def test_invalid_orientation_in_a_plan(blob_dataset, code):
    plan = make_plan(extract_fingerprint(RawDataset.load(blob_dataset)), "esophagus")
    with pytest.raises(PlanError, match="orientation"):
        Plan.from_dict({**plan.to_dict(), "orientation": code})


def _restore_storage(path, perm, flips) -> None:
    img = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.Flip(sitk.PermuteAxes(img, list(perm)), list(flips)), str(path))


def test_fingerprint_does_not_depend_on_voxel_storage(blob_dataset):
    before = extract_fingerprint(RawDataset.load(blob_dataset))
    for i, case in enumerate(RawDataset.load(blob_dataset).training):
        perm, flips = [((2, 0, 1), (True, False, False)), ((1, 0, 2), (False, True, True))][i % 2]
        for path in [*case.image_files, case.label_file]:
            _restore_storage(path, perm, flips)
    after = extract_fingerprint(RawDataset.load(blob_dataset))
    assert [c.shape for c in after.cases] == [c.shape for c in before.cases]
    assert [c.spacing for c in after.cases] == [c.spacing for c in before.cases]
    assert [c.tumour_bbox_mm for c in after.cases] == [c.tumour_bbox_mm for c in before.cases]
    assert [c.class_voxels for c in after.cases] == [c.class_voxels for c in before.cases]
    assert after.foreground_intensity == pytest.approx(before.foreground_intensity, abs=1e-6)
    assert make_plan(after, "esophagus").configurations == make_plan(before, "esophagus").configurations
