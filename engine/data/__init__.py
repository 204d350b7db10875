"""Datasets in the nnU-Net raw layout (+ stages.csv), their validation and cross-validation splits."""

from engine.data.dataset import (
    Case,
    CaseTargets,
    DatasetDescription,
    DatasetWriter,
    RawDataset,
    read_stages_csv,
    write_stages_csv,
)
from engine.data.splits import dataset_splits, load_splits, make_splits, save_splits
from engine.data.validate import ValidationReport, validate_dataset

__all__ = ["Case", "CaseTargets", "DatasetDescription", "DatasetWriter", "RawDataset", "read_stages_csv",
           "write_stages_csv", "make_splits", "dataset_splits", "save_splits", "load_splits",
           "ValidationReport", "validate_dataset"]
