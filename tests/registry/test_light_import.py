"""The registry is usable without a network library: the Slicer module lists models and reads model
cards in Slicer's own process, where importing torch or MONAI would cost seconds and memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = "esophagus-demo-0.6.0"

SCRIPT = f"""
import sys
import engine.registry
engine.registry.list_bundles()
bundle = engine.registry.load_bundle(engine.registry.builtin_dir() / {DEMO!r}, verify=True)
assert bundle.read_model_card()
heavy = sorted(m for m in ("torch", "monai") if m in sys.modules)
assert not heavy, f"importing and using engine.registry imported {{heavy}}"
"""


def test_listing_and_loading_a_bundle_imports_neither_torch_nor_monai(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ONCOSTAGING_BUILTIN_MODELS"}
    env["ONCOSTAGING_MODEL_DIR"] = str(tmp_path / "user_models")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
