"""Writes small DICOM PET series with pydicom, for the SUV conversion and CLI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

pydicom = __import__("pytest").importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

#: A typical FDG study: 70 kg, 350 MBq injected at 10:00:00, series starting at 11:00:00.
WEIGHT_KG = 70.0
DOSE_BQ = 350e6
HALF_LIFE_S = 6586.2
INJECTION_TIME = "100000.00"
SERIES_TIME = "110000.00"
SPACING_MM = 4.0


def write_pet_series(folder: Path, activity_bqml: np.ndarray, *, units: str = "BQML", decay: str = "START",
                     weight: float | None = WEIGHT_KG, slopes: np.ndarray | None = None,
                     acquisition_times: list[str] | None = None, radiopharmaceutical: bool = True,
                     modality: str = "PT") -> Path:
    """One file per slice of ``activity_bqml`` (z, y, x); stored as uint16 with per-slice rescale slopes."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    n = activity_bqml.shape[0]
    if slopes is None:
        slopes = np.maximum(activity_bqml.reshape(n, -1).max(axis=1), 1.0) / 30000.0
    for k in range(n):
        ds = _slice_header(series_uid, study_uid, frame_uid, k, units, decay, weight, radiopharmaceutical, modality)
        ds.AcquisitionTime = acquisition_times[k] if acquisition_times else SERIES_TIME
        stored = np.round(activity_bqml[k] / slopes[k]).astype(np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:.10g}", "0"
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder


def _slice_header(series_uid: str, study_uid: str, frame_uid: str, k: int, units: str, decay: str,
                  weight: float | None, radiopharmaceutical: bool, modality: str) -> Any:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, "phantom", "Phantom^PET"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20260101"
    ds.SeriesTime = SERIES_TIME
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [0.0, 0.0, SPACING_MM * k]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    ds.SliceThickness = SPACING_MM
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.Units, ds.DecayCorrection = units, decay
    if weight is not None:
        ds.PatientWeight = weight
    if radiopharmaceutical:
        item = Dataset()
        item.RadiopharmaceuticalStartTime = INJECTION_TIME
        item.RadionuclideTotalDose = DOSE_BQ
        item.RadionuclideHalfLife = HALF_LIFE_S
        ds.RadiopharmaceuticalInformationSequence = [item]
    return ds


def suv_factor(elapsed_s: float) -> float:
    """The body-weight SUV factor computed by hand: g / (Bq decayed over ``elapsed_s``)."""
    return WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-elapsed_s / HALF_LIFE_S))
