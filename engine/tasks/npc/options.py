"""What an NPC multi-task training decides (:class:`NpcTrainOptions`) and the names its bundle uses.

Torch-free: the command line builds these options before any network library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import TrainingError

ARCHITECTURE = "npc-multitask-bot"
#: The one weights file of a bundle: U-Net, stage branch and fusion module trained end to end.
NETWORK = "network"
#: Paper widths: the 3D U-Net's first stage and the 3D ResNet-50's first stage (64, as ResNet-50).
PAPER_UNET_WIDTH, PAPER_STAGE_WIDTH = 32, 64
#: Heads of the Bottleneck Transformer's self-attention and of the feature-fusion-aware module.
ATTENTION_HEADS = 4
#: The head field of view the paper crops (21 × 224 × 224 voxels at 6 × 0.4688 × 0.4688 mm), z first.
PAPER_FIELD_OF_VIEW_MM = (126.0, 105.0, 105.0)
#: Axes mirrored in training: left-right only (a nasopharyngeal tumour grows on either side; the
#: cranio-caudal and antero-posterior order carry the anatomy the stage depends on).
AUGMENT_MIRROR_AXES = (2,)


@dataclass
class NpcTrainOptions:
    """Everything ``engine train --task npc`` decides; recorded in the bundle and checked on resume.

    Defaults follow the paper (Adam 2e-4, batch 4, ReduceLROnPlateau, up to 300 epochs, stratified
    3-fold cross-validation). ``unet_width``/``stage_width`` are the first-stage channels of the U-Net
    and of the ResNet-50 (paper 32/64); narrow them (e.g. 8/8) to train on a CPU. Ablation switches:
    ``fusion=False`` classifies the staging features alone (no feature-fusion-aware module);
    ``learned_weights=False`` fixes λseg = λcls = 1; ``bot=False`` is a plain 3D ResNet-50 (3×3×3
    convolutions in every block); ``gating=False`` feeds the image, not probability map × image, to
    the stage branch.
    """

    epochs: int = 300
    steps_per_epoch: int | None = None
    batch_size: int = 4
    lr: float = 2e-4
    plateau_patience: int = 10
    unet_width: int = PAPER_UNET_WIDTH
    stage_width: int = PAPER_STAGE_WIDTH
    unet_max_width: int = 320
    fusion: bool = True
    learned_weights: bool = True
    bot: bool = True
    gating: bool = True
    augment: bool = True
    time_limit_min: float | None = None
    fold: int | None = 0
    folds: int = 3
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    val_every: int = 1
    model_id: str = "npc-multitask"
    model_name: str = "NPC GTV segmentation and T-staging (3D U-Net + Bottleneck Transformer)"
    version: str = "1.0.0"
    intended_use: str = "research use only; not a medical device"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "plateau_patience", "val_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{_option(name)} must be at least 1, not {getattr(self, name)}.")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise TrainingError(f"--steps-per-epoch must be at least 1, not {self.steps_per_epoch}.")
        for name in ("unet_width", "stage_width"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                raise TrainingError(f"{_option(name)} must be a multiple of 8 (group normalisation uses 8 "
                                    f"groups), at least 8; got {value}.")
        if self.unet_max_width < self.unet_width:
            raise TrainingError(f"--unet-max-width ({self.unet_max_width}) must be at least --unet-width "
                                f"({self.unet_width}).")
        if not self.lr > 0:
            raise TrainingError(f"--lr must be positive, not {self.lr}.")
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise TrainingError(f"--time-limit must be a positive number of minutes, not {self.time_limit_min}.")
        if self.folds < 2:
            raise TrainingError(f"Cross-validation needs at least 2 folds (--folds), not {self.folds}.")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise TrainingError(f"Fold {self.fold} (--fold) does not exist with {self.folds} folds: choose 0 to "
                                f"{self.folds - 1}, or 'all' to train on every case.")
        if self.num_workers < 0:
            raise TrainingError(f"--num-workers must be 0 or more, not {self.num_workers}.")

    @property
    def variant(self) -> str:
        """``full`` or the ablation, e.g. ``no-fusion-no-bot``."""
        off = [n for n, on in (("fusion", self.fusion), ("learned-weights", self.learned_weights),
                               ("bot", self.bot), ("gating", self.gating)) if not on]
        return "full" if not off else "no-" + "-no-".join(off)


def _option(name: str) -> str:
    """How the command line spells a :class:`NpcTrainOptions` field."""
    return "--" + name.replace("_", "-")
