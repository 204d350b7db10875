"""Checkpoints are atomic, verified, pickle-free and restore every piece of training state."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import TrainingError
from engine.training import has_checkpoint, load_checkpoint, save_checkpoint
from engine.training import checkpoint as ckmod
from engine.training.checkpoint import capture_rng_state, flatten_state, restore_rng_state, unflatten_state


class TiedNet(nn.Module):
    """Tied embedding/output weights and a non-contiguous buffer: what safetensors refuses as is."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight
        self.register_buffer("strided", torch.arange(12.0).reshape(3, 4).t())


def _trained_adam(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model.out(model.emb(torch.tensor([1, 2]))).sum()
    loss.backward()
    opt.step()
    return opt


def test_round_trip_restores_weights_optimizer_and_structure(tmp_path):
    torch.manual_seed(0)
    model = TiedNet()
    opt = _trained_adam(model)
    state = {"epoch": 3, "global_step": 42, "optimizer": opt.state_dict(), "nested": {"t": (1, 2.5, "x")},
             "best_metric": None}
    manifest = save_checkpoint(tmp_path / "ck", model, state)
    assert manifest.name == "checkpoint.json" and has_checkpoint(tmp_path / "ck")
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert len(names) == 4 and all(n.endswith((".json", ".safetensors")) for n in names)

    ck = load_checkpoint(tmp_path / "ck")
    assert ck.epoch == 3 and ck.global_step == 42
    assert ck.state["nested"] == {"t": (1, 2.5, "x")} and ck.state["best_metric"] is None
    fresh = TiedNet()
    fresh.load_state_dict(ck.model_state)
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    assert fresh.out.weight is fresh.emb.weight  # tying survives loading
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    opt2.load_state_dict(ck.state["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k, st in s1["state"].items():
        for name, v in st.items():
            assert torch.equal(v, s2["state"][k][name]), name


def test_flatten_keeps_int_keys_tuples_and_arrays():
    obj = {"state": {0: {"m": torch.ones(2)}, 7: {"m": torch.zeros(1)}}, "betas": (0.9, 0.99),
           "arr": np.arange(3, dtype=np.uint32), "inf": float("inf")}
    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_state(obj, tensors, "")
    text = json.dumps(flat)
    back = unflatten_state(json.loads(text), tensors)
    assert set(back["state"]) == {0, 7} and back["betas"] == (0.9, 0.99)
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2]
    assert torch.equal(back["state"][0]["m"], torch.ones(2)) and back["inf"] == float("inf")
    with pytest.raises(TrainingError, match="Cannot store"):
        flatten_state({"f": object()}, {}, "")


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"epoch": 0, "rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path).state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("role", ["model", "state_tensors", "state"])
def test_tampered_file_is_rejected(tmp_path, role):
    save_checkpoint(tmp_path, nn.Linear(3, 2), {"epoch": 1, "x": torch.ones(4)})
    manifest = json.loads((tmp_path / "checkpoint.json").read_text(encoding="utf-8"))
    target = tmp_path / manifest["files"][role]["name"]
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="corrupt or was modified"):
        load_checkpoint(tmp_path)


def test_weights_without_manifest_is_not_a_checkpoint(tmp_path):
    """A crash after the data files but before the manifest rename leaves nothing that loads."""
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(2)}, str(tmp_path / "model-x.safetensors"))
    assert not has_checkpoint(tmp_path)
    with pytest.raises(TrainingError, match="checkpoint.json' is missing"):
        load_checkpoint(tmp_path)


def test_missing_data_file_is_incomplete(tmp_path):
    save_checkpoint(tmp_path, nn.Linear(3, 2), {"epoch": 1})
    manifest = json.loads((tmp_path / "checkpoint.json").read_text(encoding="utf-8"))
    (tmp_path / manifest["files"]["state_tensors"]["name"]).unlink()
    with pytest.raises(TrainingError, match="incomplete"):
        load_checkpoint(tmp_path)


def test_crash_during_overwrite_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = nn.Linear(3, 2)
    save_checkpoint(tmp_path, first, {"epoch": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    real = ckmod._save_tensors
    calls = {"n": 0}

    def crash_on_second(tensors, final):
        calls["n"] += 1
        if calls["n"] == 2:  # model file of the new checkpoint already written
            raise OSError("disk full")
        real(tensors, final)

    monkeypatch.setattr(ckmod, "_save_tensors", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, nn.Linear(3, 2), {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # new files cleaned up, old ones intact
    ck = load_checkpoint(tmp_path)
    assert ck.epoch == 1 and torch.equal(ck.model_state["weight"], first.weight.detach())


def test_overwrite_removes_stale_files(tmp_path):
    save_checkpoint(tmp_path, nn.Linear(3, 2), {"epoch": 1})
    (tmp_path / ".model-old.safetensors.1234.tmp").write_bytes(b"partial")
    save_checkpoint(tmp_path, nn.Linear(3, 2), {"epoch": 2})
    assert len(list(tmp_path.iterdir())) == 4
    assert load_checkpoint(tmp_path).epoch == 2


def test_non_tensor_model_state_is_rejected(tmp_path):
    class Extra(nn.Linear):
        def get_extra_state(self):
            return {"a": 1}

        def set_extra_state(self, state):
            pass

    with pytest.raises(TrainingError, match="not a tensor"):
        save_checkpoint(tmp_path, Extra(2, 2), {"epoch": 0})
    assert not has_checkpoint(tmp_path)
