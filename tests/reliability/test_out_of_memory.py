"""Running out of memory: on a GPU the sliding window halves its batch, then moves to the CPU and says
so; in main memory the command ends with one `error:` line and writes nothing."""

from __future__ import annotations

import numpy as np
import torch

from engine.cli import main
from engine.inference.sliding_window import SlidingWindowPredictor


class _Net(torch.nn.Module):
    """A one-layer network that pretends to move to a GPU (this machine may have none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def to(self, *args, **kwargs):  # type: ignore[override]
        return self


def test_gpu_out_of_memory_halves_the_batch_then_continues_on_the_cpu(monkeypatch):
    predictor = SlidingWindowPredictor((4, 4, 4), torch.device("cuda"), sw_batch_size=2)
    real_run = SlidingWindowPredictor._run
    tried = []

    def run(self, model, x, cancel):
        tried.append((self.device.type, self.sw_batch_size))
        if self.device.type == "cuda":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, model, x, cancel)

    monkeypatch.setattr(SlidingWindowPredictor, "_run", run)
    probs = predictor(_Net().eval(), np.zeros((1, 8, 8, 8), np.float32))
    assert tried == [("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert probs.shape == (2, 8, 8, 8) and torch.allclose(probs.sum(0), torch.ones(8, 8, 8))
    assert predictor.warnings == ["GPU out of memory: retrying with 1 window(s) per batch.",
                                  "GPU out of memory even with one window per batch: continuing on the CPU (slower)."]


def test_running_out_of_main_memory_is_one_error_line(tmp_path, monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("engine.synth.generate_dataset", exhausted)
    out = tmp_path / "data"
    assert main(["synth", "--task", "esophagus", "--cases", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the computer ran out of memory")
    assert not out.exists()
