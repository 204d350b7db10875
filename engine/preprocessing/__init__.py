"""Resampling, normalisation and crop/pad, each with an exact inverse back to the input geometry."""

from engine.preprocessing.normalize import normalize
from engine.preprocessing.pipeline import (PreprocessedCase, Preprocessor, PreprocessRecord,
                                          preprocess_configurations)
from engine.preprocessing.resample import (resample_to_grid, resample_to_spacing, resampled_shape,
                                          spline_coefficients)

__all__ = ["Preprocessor", "PreprocessRecord", "PreprocessedCase", "normalize", "preprocess_configurations",
           "resample_to_grid", "resample_to_spacing", "resampled_shape", "spline_coefficients"]
