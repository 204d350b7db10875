"""Human-readable results: overview figures of segmentation, Grad-CAM and stage probabilities."""

from engine.reporting.overview import render_overview

__all__ = ["render_overview"]
