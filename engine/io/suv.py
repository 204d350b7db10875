"""PET in standardised uptake values (SUV, body weight), from a DICOM series' own tags or as given.

A PET series stores activity concentration (Bq/ml, ``Units`` BQML) after the scanner's rescale.
The body-weight SUV of a voxel is that concentration divided by the injected activity per gram of
patient, with the activity decayed from the injection to the time the image values refer to::

    SUV = C [Bq/ml] · weight [g] / (A_injected [Bq] · 2^(-Δt / T½))

``DecayCorrection`` says which time the values refer to: ``START`` (the series start: Δt from the
injection to the series time), ``ADMIN`` (the injection itself: Δt = 0) or ``NONE`` (each slice's
own acquisition time). Series already in SUV (``Units`` GML) are taken as they are; counts (CNTS)
and other units are refused, since turning them into SUV needs vendor calibration this engine
does not know. A volume file (NIfTI, NRRD, MHA) carries no such tags: it is accepted when its
values look like SUV and refused when they look like activity concentration or another modality.

pydicom reads the nested radiopharmaceutical sequence, which SimpleITK's metadata does not expose.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ImageError
from engine.io.image import Image, list_dicom_series, read_image

log = logging.getLogger(__name__)

#: F-18 half-life in seconds, used when a series does not state the radionuclide half-life.
F18_HALF_LIFE_S = 6586.2
#: A volume whose 99.9th percentile exceeds this is not in SUV (a hot tumour rarely exceeds 50).
MAX_PLAUSIBLE_SUV = 150.0
#: Values below this are not PET at all (CT in HU reaches -1000); reconstruction noise stays above it.
MIN_PLAUSIBLE_SUV = -5.0


@dataclass(frozen=True)
class SuvConversion:
    """How a PET series was turned into SUV; recorded in the report so a reader can check it."""

    units: str
    factors: tuple[float, ...]         # per slice, in the reader's slice order (all equal unless NONE)
    patient_weight_kg: float | None = None
    injected_activity_bq: float | None = None
    half_life_s: float | None = None
    decay_correction: str | None = None
    decay_interval_s: float | None = None  # injection → reference time (first slice for NONE)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"units": self.units, "factor": self.factors[0] if self.factors else None,
                "patient_weight_kg": self.patient_weight_kg, "injected_activity_bq": self.injected_activity_bq,
                "half_life_s": self.half_life_s, "decay_correction": self.decay_correction,
                "decay_interval_s": self.decay_interval_s, "notes": list(self.notes)}


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImageError("Converting a DICOM PET series to SUV needs pydicom (3D Slicer ships it; elsewhere: "
                         "pip install 'oncostaging-engine[pet]'). Or give a volume already in SUV.") from None
    return pydicom


def _dicom_datetime(date: str | None, time: str | None, what: str) -> datetime:
    """A DICOM DA + TM pair (``YYYYMMDD``, ``HHMMSS.FFFFFF``, shorter forms allowed) as a datetime."""
    if not time:
        raise ImageError(f"The PET series has no {what} time; SUV cannot be computed. Re-export the series "
                         "with its full header, or convert it to SUV in the scanner's software.")
    t = str(time).strip().replace(":", "")
    hours, minutes = int(t[0:2]), int(t[2:4]) if len(t) >= 4 else 0
    seconds = float(t[4:]) if len(t) > 4 else 0.0
    base = datetime.strptime(str(date).strip(), "%Y%m%d") if date else datetime(2000, 1, 1)
    return base + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _dicom_datetime_value(value: str) -> datetime:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``, timezone suffix ignored) as a datetime."""
    text = str(value).strip().split("+")[0].split("-")[0]
    return _dicom_datetime(text[:8], text[8:] or "000000", "radiopharmaceutical start")


def _injection(ds: Any) -> tuple[float, float, datetime | None, str | None]:
    """Injected activity (Bq), half-life (s), injection datetime (or None) and time-of-day string."""
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    if not seq:
        raise ImageError("The PET series has no Radiopharmaceutical Information Sequence (0054,0016): the "
                         "injected activity and time are unknown, so SUV cannot be computed. Re-export the "
                         "series with its full header, or give a volume already in SUV.")
    item = seq[0]
    dose = float(getattr(item, "RadionuclideTotalDose", 0) or 0)
    if not dose > 0:
        raise ImageError("The PET series does not state the injected activity (Radionuclide Total Dose, "
                         "0018,1074); SUV cannot be computed. Give a volume already in SUV.")
    half_life = float(getattr(item, "RadionuclideHalfLife", 0) or 0)
    if not half_life > 0:
        log.warning("The PET series does not state the half-life; assuming F-18 (%.1f s).", F18_HALF_LIFE_S)
        half_life = F18_HALF_LIFE_S
    start_dt = getattr(item, "RadiopharmaceuticalStartDateTime", None)
    when = _dicom_datetime_value(start_dt) if start_dt else None
    return dose, half_life, when, getattr(item, "RadiopharmaceuticalStartTime", None)


def _reference_time(ds: Any) -> tuple[str | None, str | None]:
    """Date and time the decay-corrected values of a START series refer to (series, else acquisition)."""
    date = getattr(ds, "SeriesDate", None) or getattr(ds, "AcquisitionDate", None) or getattr(ds, "StudyDate", None)
    time = getattr(ds, "SeriesTime", None) or getattr(ds, "AcquisitionTime", None)
    return date, time


def _elapsed_s(injected: datetime | None, injection_time: str | None, date: str | None, time: str | None) -> float:
    """Seconds from the injection to (date, time); without an injection date, the same day is assumed and a
    negative interval read as crossing midnight."""
    reference = _dicom_datetime(date, time, "acquisition")
    if injected is None:
        injected = _dicom_datetime(date, injection_time, "injection")
        if injected > reference:
            injected -= timedelta(days=1)
    seconds = (reference - injected).total_seconds()
    if seconds < 0:
        raise ImageError(f"The PET series was acquired {-seconds:.0f} s before the injection by its own tags; "
                         "the header times are inconsistent, so SUV cannot be computed.")
    return seconds


def suv_conversion(files: Sequence[str | Path]) -> SuvConversion:
    """The factors that turn each slice of a PET series (files in the reader's order) into body-weight SUV."""
    pydicom = _pydicom()
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    first = headers[0]
    modality = str(getattr(first, "Modality", "") or "").upper()
    if modality and modality != "PT":
        raise ImageError(f"The series' modality is '{modality}', not PET (PT); choose the PET series.")
    units = str(getattr(first, "Units", "") or "").upper()
    if units == "GML":
        return SuvConversion(units, tuple(1.0 for _ in files), notes=["stored in SUV (g/ml) already"])
    if units != "BQML":
        raise ImageError(f"The PET series stores '{units or 'no'}' units (0054,1001); SUV is computed from "
                         "activity concentration (BQML) only. Counts (CNTS) need the vendor's calibration: "
                         "export the series in Bq/ml or in SUV.")
    weight = float(getattr(first, "PatientWeight", 0) or 0)
    if not 1.0 <= weight <= 500.0:
        raise ImageError(f"The PET series' patient weight is {weight or 'missing'} (0010,1030, kg); body-weight "
                         "SUV needs it. Fill in the weight when exporting, or give a volume already in SUV.")
    dose, half_life, injected, injection_time = _injection(first)
    correction = str(getattr(first, "DecayCorrection", "START") or "START").upper()
    if correction == "ADMIN":
        intervals = [0.0] * len(headers)
    elif correction == "START":
        intervals = [_elapsed_s(injected, injection_time, *_reference_time(first))] * len(headers)
    elif correction == "NONE":
        intervals = [_elapsed_s(injected, injection_time, getattr(h, "AcquisitionDate", None) or _reference_time(h)[0],
                                getattr(h, "AcquisitionTime", None) or _reference_time(h)[1]) for h in headers]
    else:
        raise ImageError(f"Unknown decay correction '{correction}' (0054,1102); expected START, ADMIN or NONE.")
    grams = weight * 1000.0
    factors = tuple(grams / (dose * math.pow(2.0, -dt / half_life)) for dt in intervals)
    return SuvConversion(units, factors, weight, dose, half_life, correction, intervals[0])


def is_pet_series(folder: str | Path, series_uid: str | None = None) -> bool:
    """Whether ``folder`` holds a DICOM series (the one ``read_image`` would pick) of modality PT."""
    series = list_dicom_series(folder)
    if not series:
        return False
    uid = series_uid if series_uid in series else max(series, key=lambda k: len(series[k]))
    pydicom = _pydicom()
    head = pydicom.dcmread(series[uid][0], stop_before_pixels=True)
    return str(getattr(head, "Modality", "")).upper() == "PT"


def read_suv_series(folder: str | Path, series_uid: str | None = None) -> tuple[Image, SuvConversion]:
    """A DICOM PET series as a volume in body-weight SUV (refused when its tags do not allow it)."""
    series = list_dicom_series(folder)
    image = read_image(folder, series_uid=series_uid)
    uid = series_uid if series_uid in series else max(series, key=lambda k: len(series[k]))
    conversion = suv_conversion(series[uid])  # the reader stacks the files in this order
    factors = np.asarray(conversion.factors, dtype=np.float64)
    image.array = (image.array.astype(np.float64) * factors[:, None, None]).astype(np.float32)
    image.modality = "PT"
    log.info("PET series converted to SUV (%s, factor %.4g).", conversion.decay_correction or conversion.units,
             factors[0])
    return image, conversion


def check_suv_volume(image: Image) -> None:
    """Refuse a volume whose values cannot be SUV (activity in Bq/ml, a CT in HU, an empty scan)."""
    if image.modality and image.modality.upper() not in ("PT", "PET"):
        raise ImageError(f"The PET outcome model needs a PET volume in SUV, but the input's modality is "
                         f"'{image.modality}'. Choose the PET series.")
    a = image.array
    low, high = float(np.percentile(a, 0.1)), float(np.percentile(a, 99.9))
    if low < MIN_PLAUSIBLE_SUV:
        raise ImageError(f"The volume has values down to {low:.0f}: it is not a PET in SUV (a CT in HU?). "
                         "Choose the PET volume.")
    if high > MAX_PLAUSIBLE_SUV:
        raise ImageError(f"The volume's values reach {high:.0f}, far above any SUV: it looks like activity "
                         "concentration (Bq/ml) or counts. Load the DICOM PET series (the engine converts it to "
                         "SUV from its tags) or convert the volume to body-weight SUV first.")
    if float(a.max()) <= 0.5:
        raise ImageError("The volume has no uptake above SUV 0.5 anywhere; it is not a PET in SUV.")
