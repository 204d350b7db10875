"""Model bundle save/load: round trip, checksums, and refusal of tampered/incomplete/wrong bundles."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from engine.errors import BundleError, EngineError
from engine.registry import (
    DEMO_INTENDED_USE,
    Label,
    ModelBundle,
    load_bundle,
    save_bundle,
    semver_key,
    sha256_file,
)

LABELS = [
    {"name": "background", "value": 0, "color": [0, 0, 0]},
    {"name": "esophageal cancer", "value": 1, "color": [230, 60, 60],
     "terminology": {
         "category": {"coding_scheme": "SCT", "code": "49755003",
                      "meaning": "Morphologically Altered Structure"},
         "type": {"coding_scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"}}},
    Label(name="aorta", value=2, color=(200, 30, 30)),
]


@pytest.fixture(autouse=True)
def _isolated_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(tmp_path / "user_models"))
    monkeypatch.setenv("ONCOSTAGING_BUILTIN_MODELS", str(tmp_path / "builtin_models"))


def make_bundle(out: Path, weights=None, **overrides) -> ModelBundle:
    fields = dict(
        id="ec-demo", name="EC demo", version="0.1.0", task="esophagus",
        architecture={"name": "TinyUNet", "channels": [4, 8]}, plan={"patch_size": [16, 32, 32]},
        labels=LABELS, stages=["T1", "T2", "T3", "T4"], modality="CT",
        training={"data": "synthetic phantoms", "command": "python -m engine train", "seed": 0,
                  "hardware": "cpu", "date": "2025-01-01", "epochs": 1},
        metrics={"dice": 0.5}, intended_use=DEMO_INTENDED_USE,
        weights=weights or {"segmentation": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}},
        model_card="# EC demo\nSynthetic.\n",
    )
    fields.update(overrides)
    return save_bundle(out, **fields)


def test_round_trip_keeps_values_and_dtypes(tmp_path):
    base = torch.randn(4, 6)
    seg = {
        "f32": base,
        "transposed": base.t(),             # non-contiguous view
        "shared_a": base[1:3],              # two views of the same storage
        "bf16": torch.randn(5, dtype=torch.float32).to(torch.bfloat16),
        "f16": torch.randn(2, 3).half(),
        "i64": torch.arange(7, dtype=torch.int64),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    cls = {"fc.weight": torch.randn(4, 2), "fc.bias": torch.zeros(4)}
    saved = make_bundle(tmp_path / "b", weights={"segmentation_lowres": seg, "classifier": cls})

    b = load_bundle(tmp_path / "b", expected_task="esophagus")
    assert b.id == "ec-demo" and b.version == "0.1.0" and b.task == "esophagus" and b.modality == "CT"
    assert b.stages == ["T1", "T2", "T3", "T4"]
    assert b.label_names == {0: "background", 1: "esophageal cancer", 2: "aorta"}
    assert b.labels[1].terminology["type"]["code"] == "108369006"
    assert b.labels[2].color == (200, 30, 30)
    assert b.architecture == {"name": "TinyUNet", "channels": [4, 8]}
    assert b.plan == {"patch_size": [16, 32, 32]}
    assert b.is_demo and b.read_model_card().startswith("# EC demo")
    assert sorted(b.weight_names) == ["classifier", "segmentation_lowres"]
    assert saved.to_manifest() == b.to_manifest()

    got = b.load_state_dict("segmentation_lowres")
    assert set(got) == set(seg)
    for k, t in seg.items():
        assert got[k].dtype == t.dtype, k
        assert torch.equal(got[k], t.detach()), k
    got_cls = b.load_state_dict("classifier.safetensors")
    assert all(torch.equal(got_cls[k], v) for k, v in cls.items())
    with pytest.raises(BundleError, match="no weights named"):
        b.load_state_dict("nope")
    # atomic write leaves no staging folder behind
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_half_precision_storage_halves_the_files_and_loads_as_float32(tmp_path):
    from safetensors import safe_open

    weights = {"net": {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0)),
                       "steps": torch.tensor([7], dtype=torch.int64)}}
    full = make_bundle(tmp_path / "full", weights=weights)
    half = make_bundle(tmp_path / "half", weights=weights, weights_dtype="float16")
    assert half.extra["weights_dtype"] == "float16" and "weights_dtype" not in full.extra
    with safe_open(half.weight_path("net"), "pt") as f:
        assert f.get_tensor("w").dtype == torch.float16 and f.get_tensor("steps").dtype == torch.int64
    assert half.weight_file("net").bytes < 0.6 * full.weight_file("net").bytes
    state = load_bundle(half.path, verify=True).load_state_dict("net")
    assert state["w"].dtype == torch.float32 and torch.equal(state["steps"], weights["net"]["steps"])
    err = (state["w"] - weights["net"]["w"]).abs() / weights["net"]["w"].abs().clamp_min(1e-4)
    assert 0 < float(err.max()) <= 2.0**-11  # rounded, within float16's half-ulp
    with pytest.raises(BundleError, match="weights_dtype"):
        make_bundle(tmp_path / "bad", weights=weights, weights_dtype="int8")
    assert not (tmp_path / "bad").exists()


def test_recorded_sha256_and_size_match_the_files(tmp_path):
    b = make_bundle(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "model.json").read_text(encoding="utf-8"))
    for w in manifest["weights"]:
        data = (tmp_path / "b" / w["file"]).read_bytes()
        assert w["sha256"] == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "b" / w["file"])
        assert w["bytes"] == len(data)
    assert b.weights[0].file == "segmentation.safetensors"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_weights_are_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    _flip_byte(b.weight_path("segmentation"))
    with pytest.raises(BundleError, match=r"sha256.*tampered") as exc:
        load_bundle(tmp_path / "b")
    assert "segmentation.safetensors" in str(exc.value)
    # verify=False skips hashing, but an explicit verified read still catches it
    fast = load_bundle(tmp_path / "b", verify=False)
    with pytest.raises(BundleError, match="tampered"):
        fast.load_state_dict("segmentation", verify=True)
    with pytest.raises(BundleError, match="tampered"):
        fast.verify()


def test_truncated_weights_are_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    p = b.weight_path("segmentation")
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(tmp_path / "b", verify=False)


def test_missing_weights_file_is_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    b.weight_path("segmentation").unlink()
    with pytest.raises(BundleError, match=r"incomplete.*segmentation\.safetensors.*missing"):
        load_bundle(tmp_path / "b")


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    edit(m)
    (folder / "model.json").write_text(json.dumps(m))


def test_missing_required_key_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    _edit_manifest(tmp_path / "b", lambda m: m.pop("labels"))
    with pytest.raises(BundleError, match=r"missing required key\(s\) labels"):
        load_bundle(tmp_path / "b")


def test_truncated_or_missing_manifest_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    mp = tmp_path / "b" / "model.json"
    mp.write_text(mp.read_text(encoding="utf-8")[:50])
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "b")
    mp.unlink()
    with pytest.raises(BundleError, match="no model.json"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_wrong_task_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"for task 'esophagus', not 'npc'"):
        load_bundle(tmp_path / "b", expected_task="npc")
    assert issubclass(BundleError, EngineError)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(task="liver"), "unknown task"),
    (lambda m: m.update(format_version=99), "newer than this engine"),
    (lambda m: m.update(version="1.0"), "not a semantic version"),
    (lambda m: m["weights"][0].update(file="../outside.safetensors"), "plain"),
    (lambda m: m["weights"][0].update(file="segmentation.pt"), "only safetensors"),
    (lambda m: m["labels"][0].update(color=[0, 0, 300]), "color"),
    (lambda m: m.update(modality="US"), "modality"),
])
def test_invalid_manifest_fields_are_refused(tmp_path, edit, message):
    make_bundle(tmp_path / "b")
    _edit_manifest(tmp_path / "b", edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "b")


def test_save_refuses_existing_folder_unless_overwrite(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="already exists"):
        make_bundle(out)
    assert (out / "precious.txt").read_text(encoding="utf-8") == "keep me"
    b = make_bundle(out, version="0.2.0", overwrite=True)
    assert b.version == "0.2.0" and not (out / "precious.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_bundle(empty).path == empty.absolute()


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(BundleError, match="not a tensor"):
        make_bundle(tmp_path / "b", weights={"seg": {"w": [1, 2, 3]}})
    with pytest.raises(BundleError, match="unknown task"):
        make_bundle(tmp_path / "c", task="liver")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metrics_become_null(tmp_path):
    b = make_bundle(tmp_path / "b", metrics={"hd95": float("nan"), "dice": 0.7})
    assert b.metrics == {"hd95": None, "dice": 0.7}


def test_load_never_unpickles(tmp_path, monkeypatch):
    make_bundle(tmp_path / "b", weights={"seg": {"w": torch.randn(3, 3)}, "cls": {"b": torch.ones(2)}})

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load must not be used to load a bundle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    b = load_bundle(tmp_path / "b", verify=True)
    assert b.load_state_dict("seg")["w"].shape == (3, 3)
    assert torch.equal(b.load_state_dict("cls", verify=True)["b"], torch.ones(2))


def test_load_from_zip_and_manifest_path(tmp_path):
    b = make_bundle(tmp_path / "b")
    zpath = tmp_path / "b.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in (tmp_path / "b").iterdir():
            zf.write(f, f.name)
    z = load_bundle(zpath, expected_task="esophagus")
    assert torch.equal(z.load_state_dict("segmentation")["w"], b.load_state_dict("segmentation")["w"])
    assert load_bundle(tmp_path / "b" / "model.json").id == "ec-demo"


def test_semver_ordering():
    versions = ["0.9.0", "0.10.0", "1.0.0-rc.1", "1.0.0", "0.2.0", "1.0.0-alpha", "1.0.0-alpha.2"]
    assert sorted(versions, key=semver_key) == [
        "0.2.0", "0.9.0", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-rc.1", "1.0.0"]
    with pytest.raises(BundleError):
        semver_key("1.0")


def test_update_manifest_keeps_the_bundle_sealed_and_refuses_a_damaged_one(tmp_path):
    from engine.registry import update_manifest

    bundle = make_bundle(tmp_path / "m")
    updated = update_manifest(bundle.path, lambda raw: raw["plan"].update(segmentation_threshold=0.9))
    assert updated.plan["segmentation_threshold"] == 0.9
    assert load_bundle(bundle.path, verify=True).plan["segmentation_threshold"] == 0.9  # still verifies

    _flip_byte(next(bundle.path.glob("*.safetensors")))
    before = (bundle.path / "model.json").read_bytes()
    with pytest.raises(BundleError):
        update_manifest(bundle.path, lambda raw: raw["plan"].update(segmentation_threshold=0.1))
    assert (bundle.path / "model.json").read_bytes() == before  # a damaged bundle is not edited
