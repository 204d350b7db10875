"""Body-weight SUV from a DICOM PET series' own tags, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ImageError
from engine.io.image import Image
from engine.io.suv import check_suv_volume, read_suv_series, suv_conversion
from tests.tasks.pet.dicom_pet import DOSE_BQ, WEIGHT_KG, suv_factor, write_pet_series


def _activity(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(1000.0, 40000.0, (6, 8, 10))   # Bq/ml: background to a hot tumour


def test_start_decay_correction_matches_hand_computed_suv(tmp_path):
    activity = _activity()
    folder = write_pet_series(tmp_path / "pet", activity)
    image, conversion = read_suv_series(folder)
    # 70 kg, 350 MBq decayed over the hour from injection (10:00) to series start (11:00)
    factor = 70000.0 / (350e6 * 2.0 ** (-3600.0 / 6586.2))
    assert factor == pytest.approx(2.9213e-4, rel=1e-4)
    assert conversion.decay_interval_s == pytest.approx(3600.0)
    assert conversion.factors[0] == pytest.approx(factor, rel=1e-9)
    assert image.modality == "PT"
    # uint16 storage with per-slice slopes: the quantisation step is slope/2 ≤ 0.7 Bq/ml
    np.testing.assert_allclose(image.array, activity * factor, rtol=1e-4, atol=1e-3)


def test_admin_decay_correction_uses_the_injected_activity_as_is(tmp_path):
    activity = _activity(1)
    image, conversion = read_suv_series(write_pet_series(tmp_path / "pet", activity, decay="ADMIN"))
    assert conversion.factors[0] == pytest.approx(WEIGHT_KG * 1000.0 / DOSE_BQ)
    np.testing.assert_allclose(image.array, activity * WEIGHT_KG * 1000.0 / DOSE_BQ, rtol=1e-4, atol=1e-3)


def test_no_decay_correction_decays_per_slice_acquisition_time(tmp_path):
    activity = _activity(2)
    times = [f"11{2 * k:02d}00.00" for k in range(activity.shape[0])]   # 11:00, 11:02, ... 11:10
    image, _ = read_suv_series(write_pet_series(tmp_path / "pet", activity, decay="NONE", acquisition_times=times))
    for k in range(activity.shape[0]):
        expected = activity[k] * suv_factor(3600.0 + 120.0 * k)
        np.testing.assert_allclose(image.array[k], expected, rtol=1e-4, atol=1e-3)


def test_series_stored_in_suv_is_taken_as_is(tmp_path):
    suv = _activity(3) / 5000.0
    image, conversion = read_suv_series(write_pet_series(tmp_path / "pet", suv, units="GML",
                                                         slopes=np.full(suv.shape[0], 1e-3)))
    assert conversion.factors == (1.0,) * suv.shape[0]
    np.testing.assert_allclose(image.array, suv, atol=1e-3)


def test_injection_before_midnight_is_handled(tmp_path):
    from engine.io.suv import _elapsed_s

    assert _elapsed_s(None, "233000", "20260102", "003000") == pytest.approx(3600.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"units": "CNTS"}, "CNTS"),
    ({"weight": None}, "patient weight"),
    ({"radiopharmaceutical": False}, "Radiopharmaceutical Information Sequence"),
    ({"decay": "LATER"}, "decay correction"),
])
def test_series_without_what_suv_needs_is_refused(tmp_path, kwargs, message):
    folder = write_pet_series(tmp_path / "pet", _activity(), **kwargs)
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    with pytest.raises(ImageError, match=message):
        suv_conversion(files)


def test_non_pet_series_is_refused(tmp_path):
    folder = write_pet_series(tmp_path / "ct", _activity(), modality="CT")
    with pytest.raises(ImageError, match="not PET"):
        suv_conversion(sorted(str(p) for p in folder.glob("*.dcm")))


def _volume(values: np.ndarray, modality: str | None = None) -> Image:
    return Image(values.astype(np.float32), (2.0, 2.0, 2.0), modality=modality)


def test_suv_volume_is_accepted_and_other_volumes_refused():
    rng = np.random.default_rng(0)
    suv = rng.uniform(0.0, 3.0, (20, 20, 20))
    suv[8:12, 8:12, 8:12] = 12.0
    check_suv_volume(_volume(suv))
    with pytest.raises(ImageError, match="Bq/ml"):
        check_suv_volume(_volume(suv * 5000.0))
    with pytest.raises(ImageError, match="HU"):
        check_suv_volume(_volume(suv * 100.0 - 1000.0))
    with pytest.raises(ImageError, match="modality is 'CT'"):
        check_suv_volume(_volume(suv, "CT"))
    with pytest.raises(ImageError, match="no uptake"):
        check_suv_volume(_volume(suv * 0.01))
