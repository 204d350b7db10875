"""Helper for test_ddp.py (not a test): trains the toy model, under torchrun or as a single process.

Each process writes its final weights and result to ``--result`` so the test can compare ranks
with each other and with a single-process run of the same global batch, and the native threads it
still runs once training has returned: the process group's must be gone by then, or they are still
running when the interpreter shuts down, where they can abort the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors.torch import save_file  # noqa: E402

from engine.training import JsonLinesProgress, OptimizerConfig, SchedulerConfig, Trainer, TrainerConfig  # noqa: E402
from training_toys import RegressionTask, ToyDataset, toy_net  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, val_batch_size=1, shuffle=False, device="cpu", seed=0,
                        out_dir=args.out, optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.0),
                        scheduler=SchedulerConfig(name="none"))
    model = toy_net(dropout=0.0, seed=0)
    result = Trainer(model, RegressionTask(), ToyDataset(16), ToyDataset(7, seed=5), cfg,
                     callbacks=[JsonLinesProgress(sys.stdout)]).fit()
    rank = int(os.environ.get("RANK", "0"))
    threads = _native_threads()
    out = Path(args.result)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(out / f"weights_rank{rank}.safetensors"))
    (out / f"result_rank{rank}.json").write_text(json.dumps(
        {"epochs_run": result.epochs_run, "global_step": result.global_step, "best_metric": result.best_metric,
         "final_metrics": result.final_metrics, "threads_after_fit": threads}))
    return 0


def _native_threads() -> list[str] | None:
    """Names of this process's OS threads (Linux; None elsewhere), e.g. ``pt_gloo_runloop``."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    return sorted((t / "comm").read_text(encoding="utf-8").strip() for t in tasks.iterdir() if (t / "comm").exists())


if __name__ == "__main__":
    sys.exit(main())
