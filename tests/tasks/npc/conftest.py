"""A tiny NPC model trained once per test session in seconds (coarse grid, narrow network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.registry import ModelBundle
from engine.synth import generate_dataset

#: A coarse grid (the 64² phantoms at half resolution: a 16 × 32 × 32 head crop) so training takes seconds.
COARSE_SPACING = ("6", "3.28", "3.28")
TINY_TRAIN = ["--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "2", "--unet-width", "8",
              "--unet-max-width", "16", "--stage-width", "8", "--device", "cpu", "--fold", "all",
              "--target-spacing", *COARSE_SPACING, "--demo"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, especially on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def npc_phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("npc") / "data"
    generate_dataset("npc", root, cases=4, seed=3)
    return root


def train_tiny(data: Path, out: Path, *extra: str) -> ModelBundle:
    """Train through the command line, as a user would; returns the written bundle."""
    from engine.cli import main
    from engine.registry import load_bundle

    assert main(["train", "--task", "npc", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra]) == 0
    return load_bundle(out)


@pytest.fixture(scope="session")
def tiny_npc(npc_phantoms, tmp_path_factory) -> ModelBundle:
    torch.set_num_threads(1)
    return train_tiny(npc_phantoms, tmp_path_factory.mktemp("npc_model") / "model")
