"""Self-configuration: data fingerprint → plan (nnU-Net style, with the nn-TransEC additions)."""

from engine.planning.fingerprint import Fingerprint, extract_fingerprint, tumour_label_name
from engine.planning.planner import (
    Configuration,
    NetworkTopology,
    Normalization,
    Plan,
    infer_task,
    make_plan,
    transfer_plan,
)

__all__ = ["Fingerprint", "extract_fingerprint", "tumour_label_name", "Plan", "Configuration",
           "NetworkTopology", "Normalization", "make_plan", "infer_task",
           "transfer_plan"]
