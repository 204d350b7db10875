"""The result must not depend on how the voxels are stored.

One phantom CT (and its label) is stored in each of the 48 signed axis permutations (SimpleITK
``PermuteAxes`` + ``Flip``, which rewrite direction and origin so the physical image stays the same).
Every task with a predictor must give the same stage and probabilities for all of them, and the same
segmentation, Grad-CAM and KRT box once its outputs are put back into the original's orientation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from engine.io.image import Image
from engine.planning import Plan, extract_fingerprint, make_plan
from engine.preprocessing import Preprocessor, preprocess_configurations
from engine.synth import generate_case, generate_dataset
from engine.tasks import get_task, pipeline_task_names

#: Every signed axis permutation a file can store its voxels in (ITK index axes).
ORIENTATIONS = [(perm, flips) for perm in itertools.permutations(range(3))
                for flips in itertools.product((False, True), repeat=3)]
#: A representative few for the fast test: LPS (the identity), LPI (slices reversed), SPR (what
#: ``DICOMOrient(img, "SPR")`` stores), RAS (x and y flipped), ILP and PIL (cyclic permutations with a flip).
REPRESENTATIVE = [((0, 1, 2), (False, False, False)), ((0, 1, 2), (False, False, True)),
                  ((2, 1, 0), (False, False, True)), ((0, 1, 2), (True, True, False)),
                  ((2, 0, 1), (True, False, False)), ((1, 2, 0), (False, True, False))]
assert all(o in ORIENTATIONS for o in REPRESENTATIVE)


def _stored(image: Image, perm: tuple[int, ...], flips: tuple[bool, ...]) -> Image:
    """The same physical image with its voxels stored in another axis order."""
    stored = sitk.Flip(sitk.PermuteAxes(image.to_sitk(), list(perm)), list(flips))
    return Image.from_sitk(stored, dtype=image.array.dtype, modality=image.modality)


def _in_orientation(image: Image, code: str) -> Image:
    """``image`` reoriented by SimpleITK (an exact voxel reordering) to ``code``."""
    return Image.from_sitk(sitk.DICOMOrient(image.to_sitk(), code), dtype=image.array.dtype)


def test_representative_storages_are_the_named_orientations():
    codes = [sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        sitk.Flip(sitk.PermuteAxes(sitk.Image(4, 5, 6, sitk.sitkFloat32), list(p)), list(f)).GetDirection())
        for p, f in REPRESENTATIVE]
    assert codes == ["LPS", "LPI", "SPR", "RAS", "ILP", "PIL"]


def _assert_same_physical_image(stored: Image, original: Image) -> None:
    back = _in_orientation(stored, "LPS")
    np.testing.assert_array_equal(back.array, original.array)
    assert back.same_geometry(original, tolerance=1e-9)


def _tiny_esophagus(root) -> Any:
    """A tiny esophagus model trained in seconds (the pattern of tests/tasks/esophagus/conftest.py)."""
    from engine.tasks.esophagus.options import TrainOptions
    from engine.tasks.esophagus.training import train

    options = {"lowres_epochs": 1, "fullres_epochs": 1, "classifier_epochs": 1, "steps_per_epoch": 2,
               "base_features": 4, "max_features": 8, "folds": 4, "fold": 0, "val_every": 1, "device": "cpu",
               "seed": 1}
    dataset = generate_dataset("esophagus", root / "data", cases=8, seed=5)
    plan = make_plan(extract_fingerprint(dataset), "esophagus", spacing=(6.0, 3.9, 3.9))
    return train(root / "data", root / "model", TrainOptions(**options), plan=plan)


def _tiny_gtv(root) -> Any:
    """A tiny GTV model (one epoch of each network on four phantoms)."""
    from engine.tasks.gtv.options import GtvTrainOptions

    generate_dataset("gtv", root / "data", cases=4, seed=3)
    options = GtvTrainOptions(classifier_epochs=1, segmenter_epochs=1, steps_per_epoch=1, width=8, image_size=64,
                              device="cpu", fold=None)
    return get_task("gtv").train(root / "data", root / "model", options=options)


def _tiny_npc(root) -> Any:
    """A tiny NPC model (one step of the narrow network on a coarse grid)."""
    from engine.tasks.npc.options import NpcTrainOptions

    generate_dataset("npc", root / "data", cases=4, seed=3)
    options = NpcTrainOptions(epochs=1, steps_per_epoch=1, batch_size=2, unet_width=8, unet_max_width=16,
                              stage_width=8, device="cpu", fold=None)
    return get_task("npc").train(root / "data", root / "model", options=options, spacing=(6.0, 3.28, 3.28))


def _tiny_pet(root) -> Any:
    """A PET outcome model of one training step: untrained, but every step of the predictor runs."""
    from engine.tasks.pet.options import PetTrainOptions

    generate_dataset("pet", root / "data", cases=4, seed=3)
    options = PetTrainOptions(epochs=1, steps_per_epoch=1, batch_size=2, width=2, crop_size=32, val_fraction=0.0,
                              device="cpu")
    return get_task("pet").train(root / "data", root / "model", options=options)


#: How to get a fast trained model of each task that has a predictor; a new task must add one here.
TINY_MODELS: dict[str, Callable[[Any], Any]] = {"esophagus": _tiny_esophagus, "gtv": _tiny_gtv, "npc": _tiny_npc,
                                                "pet": _tiny_pet}
#: What each task's predictor needs to run fast and deterministically.
PREDICT_OPTIONS: dict[str, dict[str, Any]] = {"esophagus": {"tta": "none", "gradcam": True},
                                              "gtv": {"gradcam": True}, "npc": {"gradcam": True},
                                              "pet": {"gradcam": True}}


def test_every_task_with_a_predictor_is_covered():
    assert sorted(pipeline_task_names()) == sorted(TINY_MODELS)


@pytest.fixture(scope="module", params=pipeline_task_names())
def task_model(request, tmp_path_factory) -> dict[str, Any]:
    name = request.param
    bundle = TINY_MODELS[name](tmp_path_factory.mktemp(f"orient_{name}"))
    predictor = get_task(name).load_predictor(bundle, "cpu")
    case = generate_case(name, 11, "small")
    image = case.channels[0]

    def predict(img: Image) -> Any:
        return predictor.predict(img, **PREDICT_OPTIONS[name])

    return {"name": name, "predictor": predictor, "image": image, "label": case.label,
            "predict": predict, "reference": predict(image)}


def _check_orientation(model: dict[str, Any], perm: tuple[int, ...], flips: tuple[bool, ...]) -> None:
    original, ref = model["image"], model["reference"]
    stored = _stored(original, perm, flips)
    _assert_same_physical_image(stored, original)
    result = model["predict"](stored)
    where = f"storage PermuteAxes{perm} + Flip{flips}"
    assert result.predicted_stage == ref.predicted_stage, where
    for stage, p in (ref.stage_probabilities or {}).items():
        assert result.stage_probabilities[stage] == pytest.approx(p, abs=1e-4), where
    # outputs come back on the input's own grid ...
    assert result.labels.same_geometry(stored, tolerance=1e-9), where
    # ... and are the original's outputs, voxel for voxel, once put in the original's orientation
    labels = _in_orientation(result.labels, "LPS")
    np.testing.assert_array_equal(labels.array, ref.labels.array, err_msg=where)
    assert labels.same_geometry(ref.labels, tolerance=1e-9), where
    if ref.gradcam is not None:
        cam = _in_orientation(result.gradcam, "LPS")
        np.testing.assert_allclose(cam.array, ref.gradcam.array, atol=1e-4, err_msg=where)
    for key in ("first_corner_lps_mm", "last_corner_lps_mm", "size_mm", "size_voxels"):
        if key in getattr(ref, "krt_box", {}):
            np.testing.assert_allclose(result.krt_box[key], ref.krt_box[key], atol=2e-3, err_msg=where)
    assert result.volumes_cm3 == pytest.approx(ref.volumes_cm3, abs=1e-6), where
    for field in ("outcome_probabilities", "pathology_probabilities", "uptake"):   # the PET task's outputs
        if getattr(ref, field, None):
            assert getattr(result, field) == pytest.approx(getattr(ref, field), abs=1e-4), where
    if getattr(ref, "slice_probabilities", None):   # listed in the input's slice order: compare as a set
        np.testing.assert_allclose(sorted(result.slice_probabilities), sorted(ref.slice_probabilities),
                                   atol=1e-4, err_msg=where)


def test_representative_orientations_give_the_same_result(task_model):
    for perm, flips in REPRESENTATIVE:
        _check_orientation(task_model, perm, flips)


@pytest.mark.slow
def test_all_48_orientations_give_the_same_result(task_model):
    for perm, flips in ORIENTATIONS:
        if (perm, flips) not in REPRESENTATIVE:
            _check_orientation(task_model, perm, flips)


def test_network_input_and_label_round_trip_do_not_depend_on_storage(task_model):
    """Training cases are brought to the plan's orientation too: the network input and the training
    label are identical, and the label's round trip lands on the stored grid."""
    plan = task_model["predictor"].plan
    if not isinstance(plan, Plan):
        pytest.skip(f"task {task_model['name']} prepares its network input with its own preprocessing")
    pres = [Preprocessor(plan, name) for name in plan.configurations if plan.configurations[name].dims == 3]
    original, label = task_model["image"], task_model["label"]
    reference = preprocess_configurations(pres, original, label)
    for perm, flips in REPRESENTATIVE:
        stored_image, stored_label = _stored(original, perm, flips), _stored(label, perm, flips)
        _assert_same_physical_image(stored_label, label)
        for pre, ref, case in zip(pres, reference, preprocess_configurations(pres, stored_image, stored_label)):
            np.testing.assert_allclose(case.image, ref.image, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(case.label, ref.label)
            back = pre.to_image(pre.restore_labels(case.label, case.record), case.record)
            assert back.same_geometry(stored_label, tolerance=1e-9)
            original_back = pre.restore_labels(ref.label, ref.record)
            np.testing.assert_array_equal(_in_orientation(back, "LPS").array, original_back)
