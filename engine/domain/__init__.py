"""The model's domain: a profile of its training data (in model.json) and the check of each run
against it, so results on scans unlike the training data are flagged instead of trusted."""

from engine.domain.check import DomainCheck, apply_domain_check, check_run
from engine.domain.profile import (
                                   MANIFEST_KEY,
                                   DomainProfile,
                                   build_profile,
                                   bundle_profile,
                                   dataset_profile,
                                   is_phantom_dataset,
)

__all__ = [
                                   "MANIFEST_KEY",
                                   "DomainCheck",
                                   "DomainProfile",
                                   "apply_domain_check",
                                   "build_profile",
                                   "bundle_profile",
                                   "check_run",
                                   "dataset_profile",
                                   "is_phantom_dataset",
]
