"""DDP under torchrun with 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.training import PROGRESS_PREFIX, load_checkpoint, parse_progress_line, read_history

HERE = Path(__file__).resolve().parent
WORKER = HERE / "ddp_worker.py"
REPO = HERE.parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    return proc


def _initial_weight() -> torch.Tensor:
    from training_toys import toy_net

    return toy_net(dropout=0.0, seed=0).state_dict()["0.weight"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_ddp_two_ranks_match_single_process(tmp_path):
    epochs = 3
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER),
                "--out", str(tmp_path / "ddp"), "--result", str(tmp_path / "ddp_result"),
                "--batch-size", "2", "--epochs", str(epochs)])
    _run([sys.executable, str(WORKER), "--out", str(tmp_path / "single"), "--result", str(tmp_path / "single_result"),
          "--batch-size", "4", "--epochs", str(epochs)])

    # Ranks end bit-identical (DDP all-reduces gradients) and match the single big-batch run.
    w0 = load_file(str(tmp_path / "ddp_result" / "weights_rank0.safetensors"))
    w1 = load_file(str(tmp_path / "ddp_result" / "weights_rank1.safetensors"))
    single = load_file(str(tmp_path / "single_result" / "weights_rank0.safetensors"))
    assert set(w0) == set(w1) == set(single)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
        torch.testing.assert_close(w0[k], single[k], rtol=0, atol=1e-5)
    assert not torch.equal(w0["0.weight"], _initial_weight())  # training did move the weights

    # Only rank 0 wrote: one history with one row per epoch, one checkpoint, one set of progress lines.
    hist = read_history(tmp_path / "ddp" / "history.csv")
    ref = read_history(tmp_path / "single" / "history.csv")
    assert [r["epoch"] for r in hist] == list(range(1, epochs + 1))
    for a, b in zip(hist, ref):  # metrics averaged over ranks equal the single-process ones
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        # 7 validation cases in batches of 1, sharded 4+3 without padding: the same per-case mean.
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last")
    assert ck.epoch == epochs and ck.global_step == epochs * 4
    assert ck.state["world_size"] == 2 and len(ck.state["rng"]) == 2
    assert len(list((tmp_path / "ddp" / "checkpoints" / "last").iterdir())) == 4
    events = [parse_progress_line(line) for line in ddp.stdout.splitlines() if line.startswith(PROGRESS_PREFIX)]
    assert [e.kind for e in events].count("epoch") == epochs
    assert [e.kind for e in events].count("end") == 1 and events[-1].status == "completed"
    results = [json.loads((tmp_path / "ddp_result" / f"result_rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert results[0]["final_metrics"]["train_loss"] == results[1]["final_metrics"]["train_loss"]
    assert all(r["epochs_run"] == epochs and r["global_step"] == epochs * 4 for r in results)
    # Training tore the process group down: none of gloo's threads (workers, socket loop) outlives it into
    # interpreter shutdown, where one waking up aborted a rank after its results were written.
    for rank, r in enumerate(results):
        if r["threads_after_fit"] is not None:
            assert not [t for t in r["threads_after_fit"] if "gloo" in t], (rank, r["threads_after_fit"])
