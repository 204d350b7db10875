"""Every file of a model bundle is covered by a checksum: an edited bundle is refused, naming the file.

Before, only the weights carried a sha256: a model.json whose intensity normalisation had been edited
passed `engine models verify` and ran, silently changing every result, and an edited MODEL_CARD.md went
unnoticed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.errors import BundleError
from engine.io.image import write_image
from engine.registry import (
    DEMO_INTENDED_USE,
    export_bundle,
    import_bundle,
    list_bundles,
    load_bundle,
    save_bundle,
)
from engine.tasks import get_task
from tests.conftest import blob_case

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "esophagus-demo-0.6.0"


def _tiny_bundle(out: Path, model_card: str | None = "# Tiny\nSynthetic phantoms only.\n"):
    return save_bundle(
        out, id="tiny", name="Tiny", version="0.1.0", task="esophagus",
        architecture={"name": "TinyUNet"},
        plan={"normalization": {"scheme": "ct", "mean": 40.0, "std": 80.0}},
        labels=get_task("esophagus").labels, stages=["T1", "T2", "T3", "T4"], modality="CT",
        training={"data": "phantoms"}, metrics={}, intended_use=DEMO_INTENDED_USE,
        weights={"segmentation": {"w": torch.arange(6, dtype=torch.float32)}}, model_card=model_card)


def _edit_json(folder: Path, edit) -> None:
    path = folder / "model.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _cli(args: list[str], capsys) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith("error:")]


def _set_mean(value: float):
    return lambda m: m["plan"]["normalization"].update(mean=value)


def test_edited_normalisation_is_refused_by_verify(tmp_path, capsys):
    _tiny_bundle(tmp_path / "b")
    assert _cli(["models", "verify", str(tmp_path / "b")], capsys)[0] == 0
    _edit_json(tmp_path / "b", _set_mean(0.0))
    code, _, errors = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 2 and len(errors) == 1
    assert "model.json was edited" in errors[0] and str(tmp_path / "b") in errors[0]
    with pytest.raises(BundleError, match="model.json was edited"):
        load_bundle(tmp_path / "b", verify=False)  # even the fast load used for listing refuses it


def test_edited_deleted_or_added_model_card_is_refused(tmp_path, capsys):
    _tiny_bundle(tmp_path / "b")
    card = tmp_path / "b" / "MODEL_CARD.md"
    card.write_text(card.read_text(encoding="utf-8").replace("Synthetic phantoms only.", "Validated on 10,000 patients."))
    code, _, errors = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 2 and len(errors) == 1 and "MODEL_CARD.md was edited" in errors[0]
    card.unlink()
    code, _, errors = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 2 and "MODEL_CARD.md is missing" in errors[0]
    _tiny_bundle(tmp_path / "nocard", model_card=None)
    (tmp_path / "nocard" / "MODEL_CARD.md").write_text("# Clinically validated\n")
    code, _, errors = _cli(["models", "verify", str(tmp_path / "nocard")], capsys)
    assert code == 2 and "MODEL_CARD.md was added" in errors[0]


def test_deleted_weights_file_is_refused(tmp_path, capsys):
    bundle = _tiny_bundle(tmp_path / "b")
    bundle.weight_path("segmentation").unlink()
    code, _, errors = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 2 and "segmentation.safetensors" in errors[0] and "missing" in errors[0]


def test_an_unedited_bundle_still_verifies_exports_imports_and_loads_from_zip(tmp_path, capsys):
    bundle = _tiny_bundle(tmp_path / "b")
    code, out, _ = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 0 and "sha256 verified" in out
    zip_path = export_bundle(bundle, tmp_path / "tiny.zip")
    assert load_bundle(zip_path).manifest_sha256 == bundle.manifest_sha256
    installed = import_bundle(zip_path, registry_dir=tmp_path / "registry")
    installed.verify()
    assert installed.read_model_card() == bundle.read_model_card()
    # re-formatting model.json (indentation, key order) is not an edit
    _edit_json(tmp_path / "b", lambda m: None)
    manifest = json.loads((tmp_path / "b" / "model.json").read_text(encoding="utf-8"))
    (tmp_path / "b" / "model.json").write_text(json.dumps(dict(reversed(list(manifest.items())))))
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0")  # files the engine never reads are ignored
    assert _cli(["models", "verify", str(tmp_path / "b")], capsys)[0] == 0


def test_shipped_demo_model_is_sealed(capsys):
    code, out, _ = _cli(["models", "verify", str(DEMO_MODEL)], capsys)
    assert code == 0 and "model.json, model card" in out


def test_run_refuses_an_edited_model_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "edited"
    shutil.copytree(DEMO_MODEL, model)
    _edit_json(model, _set_mean(0.0))
    image = write_image(blob_case(0)[0], tmp_path / "ct.nii.gz")
    out = tmp_path / "result"
    code, _, errors = _cli(["run", "--task", "esophagus", "--input", str(image), "--out", str(out),
                            "--model", str(model), "--device", "cpu"], capsys)
    assert code == 2 and len(errors) == 1 and "model.json was edited" in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_an_edited_installed_model_is_listed_as_invalid(tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(registry))
    installed = import_bundle(export_bundle(_tiny_bundle(tmp_path / "b"), tmp_path / "t.zip"))
    _edit_json(installed.path, _set_mean(1.0))
    [info] = list_bundles(task="esophagus", include_builtin=False)
    assert not info.valid and "model.json was edited" in (info.error or "")


def _unseal(folder: Path) -> None:
    _edit_json(folder, lambda m: (m.pop("manifest_sha256"), m.pop("model_card")))


def test_a_bundle_from_before_checksums_is_refused_with_the_fix_and_seal_fixes_it(tmp_path, capsys):
    _tiny_bundle(tmp_path / "b")
    _unseal(tmp_path / "b")
    code, _, errors = _cli(["models", "verify", str(tmp_path / "b")], capsys)
    assert code == 2 and "python -m engine models seal" in errors[0]
    code, out, _ = _cli(["models", "seal", str(tmp_path / "b")], capsys)
    assert code == 0 and "Sealed" in out
    assert _cli(["models", "verify", str(tmp_path / "b")], capsys)[0] == 0


def test_seal_never_blesses_corrupt_weights_or_an_edited_sealed_bundle(tmp_path, capsys):
    bundle = _tiny_bundle(tmp_path / "b")
    _unseal(tmp_path / "b")
    weights = bundle.weight_path("segmentation")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, errors = _cli(["models", "seal", str(tmp_path / "b")], capsys)
    assert code == 2 and "segmentation.safetensors" in errors[0]
    assert "manifest_sha256" not in (tmp_path / "b" / "model.json").read_text(encoding="utf-8")

    _tiny_bundle(tmp_path / "c")
    _edit_json(tmp_path / "c", _set_mean(0.0))
    before = (tmp_path / "c" / "model.json").read_text(encoding="utf-8")
    code, _, errors = _cli(["models", "seal", str(tmp_path / "c")], capsys)
    assert code == 2 and "--force" in errors[0] and (tmp_path / "c" / "model.json").read_text(encoding="utf-8") == before
    assert _cli(["models", "seal", str(tmp_path / "c"), "--force"], capsys)[0] == 0
    assert load_bundle(tmp_path / "c").plan["normalization"]["mean"] == 0.0
