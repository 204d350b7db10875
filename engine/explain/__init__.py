"""Explanations of model decisions: Grad-CAM heat maps and their placement in the full volume."""

from engine.explain.gradcam import GradCamResult, grad_cam, paste_into_volume

__all__ = ["GradCamResult", "grad_cam", "paste_into_volume"]
