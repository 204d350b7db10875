"""Reusable inference steps: sliding-window prediction with memory fallback, test-time mirroring,
post-processing, KRT crops, volume quantification. The task pipelines compose them."""

from engine.inference.krt import KrtBox, crop_box, krt_box
from engine.inference.postprocess import keep_largest_component
from engine.inference.sliding_window import SlidingWindowPredictor
from engine.inference.tta import mirrored_class_probabilities
from engine.inference.volumes import structure_volumes_cm3

__all__ = ["KrtBox", "crop_box", "krt_box", "keep_largest_component", "SlidingWindowPredictor",
           "mirrored_class_probabilities", "structure_volumes_cm3"]
