"""Resampling, normalisation and crop/pad, each with an exact inverse back to the input geometry."""

from engine.preprocessing.normalize import normalize
from engine.preprocessing.pipeline import PreprocessedCase, Preprocessor, PreprocessRecord
from engine.preprocessing.resample import resample_to_grid, resample_to_spacing, resampled_shape

__all__ = ["Preprocessor", "PreprocessRecord", "PreprocessedCase", "normalize", "resample_to_grid",
           "resample_to_spacing", "resampled_shape"]
