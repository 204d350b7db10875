"""The demo bundles shipped in ``models/``: intact (sha256), small, labelled as phantom-trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.registry.bundle import load_bundle

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p for p in MODELS.iterdir() if p.is_dir()) if MODELS.is_dir() else []


def test_the_esophagus_demo_model_is_shipped():
    assert any(load_bundle(p).task == "esophagus" for p in SHIPPED), "models/ holds no EsophagusStaging demo model"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_bundle_is_verified_small_and_marked_as_demo(folder):
    bundle = load_bundle(folder, verify=True)  # every weight file matches its sha256
    assert folder.name == bundle.folder_name
    assert bundle.is_demo
    assert bundle.weights and all(w.file.endswith(".safetensors") for w in bundle.weights)
    assert {p.name for p in folder.iterdir()} == {"model.json", "MODEL_CARD.md", *(w.file for w in bundle.weights)}
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    assert size_mb < 10, f"{folder.name} is {size_mb:.1f} MB; shipped demo weights must stay a few MB"
    card = bundle.read_model_card() or ""
    assert "synthetic phantoms" in card and "not for clinical use" in card
