"""Training options of the GTV task (HCF: slice classifier + SANet, or the one-network ResFormer).

Torch-free: the command line builds these before any network library is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``hcf``: the paper's heterogeneous cascade (slice classifier, then SANet on the slices it keeps);
#: ``resformer``: one multi-task network (segmentation + slice classification heads).
ARCHITECTURES = ("hcf", "resformer")
#: Balance-Sampling Strategy ratios (abnormal : normal slices); mirrors engine.data.balance_sampling.
BALANCE_RATIOS = ("abnormal", "1:1", "1:2", "1:4", "natural")
#: Bundle weight names.
CLASSIFIER, SEGMENTER, RESFORMER = "classifier", "segmenter", "resformer"
#: Slices whose classifier probability reaches this are segmented (the paper's decision rule).
DEFAULT_THRESHOLD = 0.5


@dataclass
class GtvTrainOptions:
    """Everything ``engine train --task gtv`` decides; recorded in the bundle and checked on resume.

    Defaults follow the paper (AdamW 1e-3, weight decay 1e-4, cosine annealing with warm restarts
    T0 = 20, early stopping after 30 epochs without improvement, at most 120 epochs, θ1 + θ1
    sampling); batch sizes are smaller than the paper's 128/64 so that a single GPU or a CPU copes.
    """

    architecture: str = "hcf"
    classifier_epochs: int = 120
    segmenter_epochs: int = 120
    classifier_ratio: str = "1:1"
    segmenter_ratio: str = "1:1"
    classifier_batch_size: int = 32
    segmenter_batch_size: int = 16
    steps_per_epoch: int | None = None
    width: int = 64
    image_size: int | None = None
    use_classifier: bool = True
    use_sam: bool = True
    use_ppm: bool = True
    cr_loss: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-4
    restart_epochs: int = 20
    patience: int = 30
    threshold: float = DEFAULT_THRESHOLD
    time_limit_min: float | None = None
    augment: bool = True
    split: str | None = None
    fold: int | None = 0
    folds: int = 5
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    model_id: str = "gtv-hcf"
    model_name: str = "GTV segmentation (HCF: slice classifier + SANet)"
    version: str = "1.0.0"
    intended_use: str = "research use only, not for clinical use"

    def __post_init__(self) -> None:
        from engine.errors import TrainingError

        if self.architecture not in ARCHITECTURES:
            raise TrainingError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, "
                                f"not {self.architecture!r}.")
        for name in ("classifier_ratio", "segmenter_ratio"):
            if getattr(self, name) not in BALANCE_RATIOS:
                raise TrainingError(f"{name.replace('_', '-')} must be one of {', '.join(BALANCE_RATIOS)}.")
        if self.width < 4 or (self.image_size is not None and self.image_size % 32):
            raise TrainingError("--width must be >= 4 and --image-size a multiple of 32.")
        if not 0.0 < self.threshold < 1.0:
            raise TrainingError(f"The slice threshold must lie in (0, 1), got {self.threshold}.")

    @property
    def variant(self) -> str:
        """A short name of the ablation, e.g. ``hcf``, ``hcf-no_sam-no_cr``, ``resformer``."""
        if self.architecture == "resformer":  # one network, its own multi-task loss: no ablation switches
            return "resformer"
        off = [n for n, on in (("no_classifier", self.use_classifier), ("no_sam", self.use_sam),
                               ("no_ppm", self.use_ppm), ("no_cr", self.cr_loss)) if not on]
        return "-".join(["hcf", *off])
