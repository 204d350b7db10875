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
def test_shipped_bundle_is_verified_small_and_marked_for_research_use(folder):
    bundle = load_bundle(folder, verify=True)  # every file matches its sha256
    assert folder.name == bundle.folder_name
    assert bundle.is_demo  # "not for clinical use"
    assert bundle.weights and all(w.file.endswith(".safetensors") for w in bundle.weights)
    assert {p.name for p in folder.iterdir()} == {"model.json", "MODEL_CARD.md", *(w.file for w in bundle.weights)}
    card = bundle.read_model_card() or ""
    phantom_trained = "synthetic phantoms" in card
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    limit = 10 if phantom_trained else 60  # a few MB for phantom demos, at most 60 MB for real data
    assert size_mb < limit, f"{folder.name} is {size_mb:.1f} MB (limit {limit} MB)"
    assert "not for clinical use" in card
    if not phantom_trained:  # a model trained on patients names its data, their licence and its validation
        assert "Source images and licence" in card and "validation" in card.lower()
