"""Shared fixtures: paths to ../shared/data (skipping when absent) and tiny hand-made datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.data.dataset import CaseTargets, DatasetDescription, DatasetWriter
from engine.io.image import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ONCOSTAGING_SHARED_DATA", REPO.parent / "shared" / "data"))
#: Task plug-ins written outside the engine (``toy_task``), importable by name in every test.
PLUGINS = REPO / "tests" / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))


@pytest.fixture(autouse=True)
def _isolated_model_dir(tmp_path_factory, monkeypatch):
    """Tests never touch the user's real model directory, and see no shipped demo model unless they
    ask for it (tests/registry/test_shipped_models.py checks the shipped ones)."""
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(tmp_path_factory.mktemp("user_models")))
    monkeypatch.setenv("ONCOSTAGING_BUILTIN_MODELS", str(tmp_path_factory.mktemp("builtin_models")))


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test cleanly when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def blob_case(seed: int, shape=(24, 32, 32), spacing=(2.0, 1.5, 1.5), modality="CT") -> tuple[Image, Image]:
    """A body-like block with two labelled boxes; the tumour (label 1) size varies with the seed."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000.0, np.float32)
    arr[2:-2, 3:-3, 3:-3] = 40 + rng.normal(0, 15, (shape[0] - 4, shape[1] - 6, shape[2] - 6))
    lab = np.zeros(shape, np.uint8)
    ext = 3 + seed % 4
    z0 = 5 + seed % 3
    lab[z0:z0 + ext, 10:10 + ext, 12:12 + ext + 1] = 1
    lab[14:20, 16:24, 6:12] = 2
    arr[lab == 1] += 30
    origin = (-20.0 + seed, 5.0, 100.0)
    return Image(arr, spacing, origin, np.eye(3), modality), Image(lab, spacing, origin, np.eye(3))


def write_blob_dataset(root: Path, cases: int = 6, stages: bool = True) -> Path:
    desc = DatasetDescription(name="Blobs", channel_names={"0": "CT"},
                              labels={"background": 0, "EC": 1, "aorta": 2},
                              stages=["T1", "T2", "T3", "T4"] if stages else None)
    w = DatasetWriter(root, desc)
    for i in range(cases):
        img, lab = blob_case(i)
        w.add_case(f"case_{i:03d}", img, lab, CaseTargets(t_stage=f"T{i % 4 + 1}") if stages else None)
    w.finalize()
    return root


@pytest.fixture
def blob_dataset(tmp_path) -> Path:
    return write_blob_dataset(tmp_path / "blobs")
