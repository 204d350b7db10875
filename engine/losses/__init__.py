"""Losses the papers specify, built on MONAI's focal and Dice losses."""

from engine.losses.classification import stage_focal_loss
from engine.losses.cr_loss import CRLoss, ResFormerLoss
from engine.losses.segmentation import DeepSupervisionLoss, segmentation_loss

__all__ = ["CRLoss", "DeepSupervisionLoss", "ResFormerLoss", "segmentation_loss", "stage_focal_loss"]
