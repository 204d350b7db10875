"""What an nn-TransEC training decides (:class:`TrainOptions`) and the names its bundle uses.

Imports no network library: the command line builds these options before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import TrainingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.registry import ModelBundle

ARCHITECTURE = "nn-MTNet"
#: Weight names in the bundle: the cascade's two segmentation networks and the stage classifier.
LOWRES, FULLRES, CLASSIFIER = "segmentation_lowres", "segmentation_fullres", "classifier"
#: ``architecture`` key of a bundle that stages with several classifiers: their weights names, in order.
CLASSIFIER_MEMBERS = "classifier_members"
CLASSIFIER_CHECKPOINTS = ("final", "best")
#: Structures that are one object in every patient (nn-TransEC post-processing); lymph nodes are many.
SINGLE_OBJECT = ("EC", "aorta", "esophagus", "pericardium")
#: Spatial axes (z, y, x → 0, 1, 2) the stage classifier sees mirrored in training and averages over at
#: inference: in-plane only, the cranio-caudal order carries anatomy (tumour above/below the carina).
CLASSIFIER_MIRROR_AXES = (1, 2)
#: The segmentation networks see every axis mirrored in training (nnU-Net's augmentation).
SEGMENTATION_MIRROR_AXES = (0, 1, 2)
SEGMENTATION_PHASES = (("lowres", LOWRES), ("fullres", FULLRES))


def classifier_weight_names(bundle: "ModelBundle") -> list[str]:
    """The bundle's stage-classifier weights: one, or an ensemble's members (averaged at inference)."""
    return list(bundle.architecture.get(CLASSIFIER_MEMBERS) or [CLASSIFIER])


@dataclass
class TrainOptions:
    """Everything ``engine train --task esophagus`` decides; recorded in the bundle.

    Epoch counts are per phase. ``base_features``/``max_features`` narrow the plan's network width
    (nnU-Net default 32→320), e.g. for CPU training or small demo weights. Ablation switches
    (nn-TransEC Tables 12–13): ``krt=False`` classifies the whole volume with the same network;
    ``attention=False`` drops the cross-task gates; ``transfer=False`` starts the classification
    encoder from random weights; ``direct_3d=True`` is a plain 3D classifier of the whole volume
    (no KRT, no attention, no transfer: segmentation does not inform staging at all).
    ``segmentation_from`` (a bundle path or installed id) starts from that bundle's plan and cascade
    segmentation networks: a segmentation phase with 0 epochs keeps its network as it is, more epochs
    continue training it (fine-tuning on new data, or adding budget across runs). When both
    phases train further, the intensity normalisation and stage weights are re-planned on the new
    dataset (:func:`~engine.planning.planner.transfer_plan`); otherwise the source's stay. The classifier
    is always trained anew. With both segmentation phases at 0 the ablation variants differ in the
    staging phase alone, and staging can be retrained on new stage labels without re-segmenting.
    """

    lowres_epochs: int = 50
    fullres_epochs: int = 50
    classifier_epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int | None = None
    classifier_batch_size: int = 12
    lr: float = 1e-3
    classifier_lr: float = 3e-4
    seg_loss: str = "focal+dice"
    #: Train the full-resolution stage on randomly perturbed low-resolution priors (nnU-Net's cascade
    #: augmentation), so it learns to correct the prior instead of copying its extent. Off by default:
    #: a fine-tune of the demo model with it measured no gain in tumour Dice
    #: (docs/results/tumour-error-analysis.md).
    perturb_prior: bool = False
    base_features: int | None = None
    max_features: int | None = None
    fold: int | None = 0
    folds: int = 5
    seed: int = 0
    device: str = "auto"
    val_every: int = 5
    num_workers: int = 0
    krt: bool = True
    attention: bool = True
    transfer: bool = True
    direct_3d: bool = False
    krt_jitter: float = 0.125
    #: Which classifier goes into the bundle: the last epoch's, or the one with the best validation
    #: macro AUC (needs a validation fold; small staging datasets overfit late).
    classifier_checkpoint: str = "final"
    segmentation_from: str | None = None
    model_id: str = "esophagus-nntransec"
    model_name: str = "nn-TransEC esophageal cancer segmentation and T-staging"
    version: str = "1.0.0"
    intended_use: str = "research use only; not a medical device"

    def __post_init__(self) -> None:
        if self.classifier_checkpoint not in CLASSIFIER_CHECKPOINTS:
            raise TrainingError(f"The classifier checkpoint (--classifier-checkpoint) must be one of "
                                f"{', '.join(CLASSIFIER_CHECKPOINTS)}, not '{self.classifier_checkpoint}'.")
        if self.classifier_checkpoint == "best" and self.fold is None:
            raise TrainingError("Keeping the best classifier needs a validation fold to judge it by; "
                                "choose --fold N instead of 'all', or keep the final classifier.")
        if self.direct_3d:
            self.krt = self.attention = self.transfer = False
        for name in ("lowres_epochs", "fullres_epochs", "classifier_epochs", "steps_per_epoch",
                     "classifier_batch_size", "val_every"):
            least = 0 if self.segmentation_from and name in ("lowres_epochs", "fullres_epochs") else 1
            if getattr(self, name) < least:
                raise TrainingError(f"{_option(name)} must be at least {least}, not {getattr(self, name)}"
                                    + (" (0 keeps a phase's network, which needs --segmentation-from)."
                                       if getattr(self, name) == 0 else "."))
        self._check_ranges()

    def _check_ranges(self) -> None:
        """The values a command line could get wrong that the per-phase checks above do not cover."""
        for name in ("batch_size", "base_features", "max_features"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainingError(f"{_option(name)} must be at least 1, not {value}.")
        if self.num_workers < 0:
            raise TrainingError(f"{_option('num_workers')} must be 0 or more, not {self.num_workers}.")
        if self.folds < 2:
            raise TrainingError(f"Cross-validation needs at least 2 folds (--folds), not {self.folds}.")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise TrainingError(f"Fold {self.fold} (--fold) does not exist with {self.folds} folds: choose 0 to "
                                f"{self.folds - 1}, or 'all' to train on every case.")

    @property
    def variant(self) -> str:
        if self.direct_3d:
            return "direct-3d"
        off = [n for n, on in (("krt", self.krt), ("attention", self.attention), ("transfer", self.transfer))
               if not on]
        return "full" if not off else "no-" + "-no-".join(off)

    @property
    def uses_krt(self) -> bool:
        """Whether the classifier sees the KRT crop (else the whole volume)."""
        return self.krt and not self.direct_3d


def _option(name: str) -> str:
    """How the command line spells a :class:`TrainOptions` field."""
    return "--" + name.replace("_", "-")
