"""What a PET outcome training decides (:class:`PetTrainOptions`) and the names its bundle uses.

Imports no network library: the command line builds these options before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import TrainingError

ARCHITECTURE = "pet-multitask-multiscale"
#: Weight name of the one network in the bundle.
NETWORK = "network"
#: Outcome classes, index = label in stages.csv (1 = poor: non-response or progression).
OUTCOMES = ("good", "poor")
#: Pathology classes of the paper's cohort (index = class of the pathology head).
PATHOLOGIES = ("esophageal", "lung")
#: Ablation variants, in the paper's terms.
VARIANTS = ("multitask", "single-task", "no-multiscale", "no-reconstruction")


@dataclass
class PetTrainOptions:
    """Everything ``engine train --task pet`` decides; recorded in the bundle.

    Loss weights: α (``recon_weight``) = β (``seg_weight``) as in the paper, ω (``class_weight``)
    and λ (``outcome_weight``, best 0.3 in the paper). Ablations: ``single_task`` trains the outcome
    predictor alone on the encoder's multi-scale features (no decoders, no pathology head);
    ``multi_scale=False`` predicts the outcome from the tumour features only; ``reconstruction=False``
    drops the reconstruction decoder. ``teacher_forcing`` is the share of training batches whose tumour
    features come from the reference label instead of the network's own segmentation (the outcome
    head learns on correct tumours while the segmentation is still poor). ``time_limit_min`` stops
    training at a wall-clock budget and keeps the best weights so far.
    """

    epochs: int = 40
    steps_per_epoch: int = 40
    batch_size: int = 4
    lr: float = 1e-3
    width: int = 4
    crop_size: int = 48
    recon_weight: float = 1.0
    seg_weight: float = 1.0
    class_weight: float = 1.0
    outcome_weight: float = 0.3
    single_task: bool = False
    multi_scale: bool = True
    reconstruction: bool = True
    teacher_forcing: float = 0.5
    tumour_fraction: float = 0.75
    jitter_vox: int = 6
    val_fraction: float = 0.1
    time_limit_min: float | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    model_id: str = "pet"
    model_name: str = "PET treatment outcome (multi-task, multi-scale)"
    version: str = "1.0.0"
    intended_use: str = "research"
    weights_float16: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.crop_size < 32 or self.crop_size % 16:
            raise TrainingError(f"The crop size must be a multiple of 16 and at least 32 voxels, not {self.crop_size}.")
        for name in ("recon_weight", "seg_weight", "class_weight", "outcome_weight"):
            if getattr(self, name) < 0:
                raise TrainingError(f"The loss weight {name} must not be negative.")
        if not self.outcome_weight > 0:
            raise TrainingError("The outcome weight λ must be > 0: the outcome is what this task predicts.")
        for name in ("teacher_forcing", "tumour_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainingError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if not 0.0 <= self.val_fraction < 0.5:
            raise TrainingError(f"The validation fraction must lie in [0, 0.5), got {self.val_fraction}.")

    @property
    def variant(self) -> str:
        if self.single_task:
            return "single-task"
        if not self.multi_scale:
            return "no-multiscale"
        if not self.reconstruction:
            return "no-reconstruction"
        return "multitask"
