"""Registry: model directories, zip export/import (incl. unsafe zips), listing and default selection."""

from __future__ import annotations

import logging
import stat
import zipfile
from pathlib import Path

import pytest
import torch

import engine
from engine.errors import BundleError
from engine.registry import (
    DEMO_INTENDED_USE,
    builtin_dir,
    export_bundle,
    find_bundle,
    import_bundle,
    list_bundles,
    load_bundle,
    safe_extract,
    save_bundle,
    user_model_dir,
)


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    user, builtin = tmp_path / "user_models", tmp_path / "builtin_models"
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(user))
    monkeypatch.setenv("ONCOSTAGING_BUILTIN_MODELS", str(builtin))
    return user, builtin


def make_bundle(out: Path, id="ec-demo", version="0.1.0", task="esophagus", value=1.0):
    return save_bundle(
        out, id=id, name=f"{id} model", version=version, task=task,
        architecture={"name": "TinyUNet"}, plan={},
        labels=[{"name": "tumour", "value": 1, "color": [255, 0, 0]}],
        stages=None, modality="CT", training={"data": "phantoms"}, metrics={}, intended_use=DEMO_INTENDED_USE,
        weights={"segmentation": {"w": torch.full((2, 3), value)}}, model_card=None,
    )


def test_user_model_dir_from_env(dirs, tmp_path, monkeypatch):
    assert user_model_dir() == dirs[0]
    monkeypatch.setenv("ONCOSTAGING_MODEL_DIR", str(Path(engine.__file__).parent / "models"))
    with pytest.raises(BundleError, match="inside the installed engine package"):
        user_model_dir()


def test_default_user_model_dir_is_per_user_not_install_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ONCOSTAGING_MODEL_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))
    d = user_model_dir()
    package_root = Path(engine.__file__).resolve().parent.parent
    assert not d.resolve().is_relative_to(package_root)
    assert d.is_relative_to(tmp_path)
    assert d.parts[-1] == "models" and d.parts[-2].lower() == "oncostaging"


def test_builtin_dir_override_and_default(dirs, monkeypatch):
    assert builtin_dir() == dirs[1]
    monkeypatch.delenv("ONCOSTAGING_BUILTIN_MODELS")
    default = builtin_dir()
    expected = Path(engine.__file__).resolve().parent.parent / "models"
    assert default == (expected if expected.is_dir() else None)


def test_export_import_round_trip(dirs, tmp_path):
    user = dirs[0]
    src = make_bundle(tmp_path / "src", value=3.5)
    zpath = export_bundle(src, tmp_path / "out" / "ec.zip")
    with zipfile.ZipFile(zpath) as zf:  # exported inside one top folder
        assert sorted(zf.namelist()) == ["ec-demo-0.1.0/model.json", "ec-demo-0.1.0/segmentation.safetensors"]
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(src, zpath)

    b = import_bundle(zpath)
    assert b.path == user / "ec-demo-0.1.0"
    assert torch.equal(b.load_state_dict("segmentation")["w"], torch.full((2, 3), 3.5))
    assert b.to_manifest() == src.to_manifest()
    assert [p.name for p in user.iterdir()] == ["ec-demo-0.1.0"]  # no staging leftovers


def test_zip_with_content_at_top_level_is_accepted(dirs, tmp_path):
    src = make_bundle(tmp_path / "src")
    zpath = tmp_path / "flat.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.path.iterdir():
            zf.write(f, f.name)
        zf.writestr("__MACOSX/._model.json", b"junk")
    b = import_bundle(zpath, registry_dir=tmp_path / "reg")
    assert b.path == tmp_path / "reg" / "ec-demo-0.1.0"
    assert (b.path / "model.json").is_file()
    assert [p.name for p in (tmp_path / "reg").iterdir()] == ["ec-demo-0.1.0"]


def test_zip_with_top_folder_of_any_name_is_accepted(tmp_path):
    src = make_bundle(tmp_path / "src")
    zpath = tmp_path / "nested.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.path.iterdir():
            zf.write(f, f"my download/{f.name}")
    b = import_bundle(zpath, registry_dir=tmp_path / "reg")
    assert b.path.name == "ec-demo-0.1.0"


def _zip_with_extra(tmp_path: Path, name: str, info_edit=None) -> Path:
    src = make_bundle(tmp_path / "src")
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.path.iterdir():
            zf.write(f, f"b/{f.name}")
        info = zipfile.ZipInfo(name)
        if info_edit:
            info_edit(info)
        zf.writestr(info, b"payload")
    return zpath


@pytest.mark.parametrize("member", ["../../evil.txt", "b/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt"])
def test_zip_slip_member_is_refused(tmp_path, member):
    zpath = _zip_with_extra(tmp_path, member)
    reg = tmp_path / "reg"
    with pytest.raises(BundleError, match="unsafe member"):
        import_bundle(zpath, registry_dir=reg)
    assert list(reg.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    def as_link(info):
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16

    zpath = _zip_with_extra(tmp_path, "b/link", as_link)
    with pytest.raises(BundleError, match="symbolic link"):
        import_bundle(zpath, registry_dir=tmp_path / "reg")


def test_oversized_zip_is_refused(tmp_path):
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("b/zeros.bin", b"\0" * 100_000)  # compresses to ~100 bytes
    (tmp_path / "out").mkdir()
    with pytest.raises(BundleError, match="limit"):
        safe_extract(zpath, tmp_path / "out", max_bytes=10_000)
    assert list((tmp_path / "out").iterdir()) == []


def test_not_a_zip_or_no_bundle_inside(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(BundleError, match="not a readable zip"):
        import_bundle(bad, registry_dir=tmp_path / "reg")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(BundleError, match="holds no model.json"):
        import_bundle(empty, registry_dir=tmp_path / "reg")
    assert list((tmp_path / "reg").iterdir()) == []


def test_import_tampered_zip_is_refused_and_changes_nothing(tmp_path):
    src = make_bundle(tmp_path / "src")
    zpath = tmp_path / "t.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.path.iterdir():
            data = f.read_bytes()
            if f.suffix == ".safetensors":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            zf.writestr(f.name, data)
    with pytest.raises(BundleError, match="tampered"):
        import_bundle(zpath, registry_dir=tmp_path / "reg")
    assert list((tmp_path / "reg").iterdir()) == []


def test_import_existing_id_refused_without_overwrite(dirs, tmp_path):
    first = export_bundle(make_bundle(tmp_path / "a", value=1.0), tmp_path / "a.zip")
    second = export_bundle(make_bundle(tmp_path / "b", value=2.0), tmp_path / "b.zip")
    installed = import_bundle(first)
    with pytest.raises(BundleError, match="already installed"):
        import_bundle(second)
    kept = load_bundle(installed.path).load_state_dict("segmentation")["w"]
    assert torch.equal(kept, torch.full((2, 3), 1.0))
    replaced = import_bundle(second, overwrite=True)
    assert replaced.path == installed.path
    assert torch.equal(replaced.load_state_dict("segmentation")["w"], torch.full((2, 3), 2.0))
    assert [p.name for p in dirs[0].iterdir()] == ["ec-demo-0.1.0"]


def test_list_bundles_reports_invalid_without_crashing(dirs, caplog):
    user = dirs[0]
    make_bundle(user / "good-0.1.0")
    broken = make_bundle(user / "broken-0.1.0", id="broken")
    broken.weight_path("segmentation").unlink()
    (user / "junk").mkdir()
    (user / "junk" / "model.json").write_text('{"id": "junk", "task": "esoph')  # truncated
    make_bundle(user / "npc-0.1.0", id="npc-demo", task="npc")

    with caplog.at_level(logging.WARNING, logger="engine.registry"):
        infos = list_bundles()
    by_dir = {i.path.name: i for i in infos}
    assert set(by_dir) == {"good-0.1.0", "broken-0.1.0", "junk", "npc-0.1.0"}
    assert by_dir["good-0.1.0"].valid and by_dir["good-0.1.0"].bundle.id == "ec-demo"
    assert not by_dir["broken-0.1.0"].valid and "missing" in by_dir["broken-0.1.0"].error
    assert by_dir["broken-0.1.0"].task == "esophagus"  # still read for filtering
    assert not by_dir["junk"].valid and "not valid JSON" in by_dir["junk"].error
    assert "Skipping invalid model bundle" in caplog.text
    assert "invalid" in by_dir["junk"].display_name
    assert "not for clinical use" in by_dir["good-0.1.0"].display_name

    ec = {i.path.name for i in list_bundles(task="esophagus")}
    assert ec == {"good-0.1.0", "broken-0.1.0", "junk"}  # junk: task unknown, shown everywhere
    assert {i.path.name for i in list_bundles(task="npc") if i.valid} == {"npc-0.1.0"}
    with pytest.raises(BundleError, match="Unknown task"):
        list_bundles(task="liver")


def test_list_bundles_includes_builtin_on_request(dirs):
    user, builtin = dirs
    make_bundle(builtin / "ec-demo-0.1.0")
    make_bundle(user / "mine-1.0.0", id="mine", version="1.0.0")
    assert {(i.id, i.source) for i in list_bundles()} == {("ec-demo", "builtin"), ("mine", "user")}
    assert {i.id for i in list_bundles(include_builtin=False)} == {"mine"}


def test_find_bundle_picks_highest_semver(dirs):
    user, builtin = dirs
    make_bundle(user / "a", version="0.9.0", value=9.0)
    make_bundle(builtin / "b", version="0.10.0", value=10.0)
    make_bundle(user / "c", version="0.2.0", value=2.0)
    make_bundle(user / "d", id="other", version="5.0.0", task="gtv")
    newest = find_bundle("esophagus")
    assert newest.version == "0.10.0"
    assert torch.equal(newest.load_state_dict("segmentation")["w"], torch.full((2, 3), 10.0))
    assert [i.version for i in list_bundles(task="esophagus")] == ["0.10.0", "0.9.0", "0.2.0"]
    assert find_bundle("esophagus", model_id="ec-demo-0.2.0").version == "0.2.0"
    assert find_bundle("esophagus", model_id="ec-demo").version == "0.10.0"
    assert find_bundle("esophagus", include_builtin=False).version == "0.9.0"
    assert find_bundle("gtv").id == "other"
    with pytest.raises(BundleError, match="for task 'gtv', not 'esophagus'"):
        find_bundle("esophagus", model_id="other")


def test_find_bundle_verifies_the_chosen_model(dirs):
    b = make_bundle(dirs[0] / "ec")
    data = bytearray(b.weight_path("segmentation").read_bytes())
    data[-1] ^= 0xFF
    b.weight_path("segmentation").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        find_bundle("esophagus")


def test_find_bundle_without_models_says_how_to_import(dirs):
    with pytest.raises(BundleError, match=r"No model is installed for task 'npc'.*engine models import") as exc:
        find_bundle("npc")
    assert str(dirs[0]) in str(exc.value)
    with pytest.raises(BundleError, match="Unknown task"):
        find_bundle("liver")
    broken = make_bundle(dirs[0] / "npc", id="npc-demo", task="npc")
    broken.weight_path("segmentation").unlink()
    with pytest.raises(BundleError, match="Invalid bundles were skipped"):
        find_bundle("npc")
