"""Losses the papers specify, built on MONAI's focal and Dice losses."""

from engine.losses.segmentation import DeepSupervisionLoss, segmentation_loss
from engine.losses.classification import stage_focal_loss

__all__ = ["DeepSupervisionLoss", "segmentation_loss", "stage_focal_loss"]
