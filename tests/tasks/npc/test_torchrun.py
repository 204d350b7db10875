"""``torchrun -m engine train`` with two CPU ranks (gloo): every rank trains, only the first locks the
output folder and writes the bundle, and the command succeeds on every rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.registry import load_bundle

from .conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_torchrun_trains_through_the_command_line(npc_phantoms, tmp_path):
    out = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "engine", "train", "--task", "npc",
         "--data", str(npc_phantoms), "--out", str(out), *TINY_TRAIN],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("written to") == 1  # one bundle, reported by the first rank
    assert load_bundle(out).task == "npc"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model"]
