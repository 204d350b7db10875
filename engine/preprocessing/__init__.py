"""Reorientation, resampling, normalisation and crop/pad, each with an exact inverse to the input grid."""

from engine.preprocessing.normalize import normalize
from engine.preprocessing.orientation import Reorientation, orientation_code, reorientation
from engine.preprocessing.pipeline import (PreprocessedCase, Preprocessor, PreprocessRecord,
                                          preprocess_configurations)
from engine.preprocessing.resample import (resample_to_grid, resample_to_spacing, resampled_shape,
                                          spline_coefficients)

__all__ = ["Preprocessor", "PreprocessRecord", "PreprocessedCase", "Reorientation", "normalize",
           "orientation_code", "reorientation", "preprocess_configurations",
           "resample_to_grid", "resample_to_spacing", "resampled_shape", "spline_coefficients"]
