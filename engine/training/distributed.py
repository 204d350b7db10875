"""Distributed data parallel under ``torchrun``.

``torchrun --nproc_per_node=N script.py`` sets RANK/WORLD_SIZE/LOCAL_RANK; the trainer then joins
a process group (gloo on CPU, nccl on CUDA), wraps the model in DDP and shards the data with
``DistributedSampler``. Without those variables everything here is a no-op, so single-process
code needs no special case.

Teardown must really end the group: gloo runs two worker threads and a socket thread per group, and
a group that outlives ``destroy_process_group`` keeps them running, still connected to the other ranks,
into interpreter shutdown, where a native thread that wakes up (a peer closing its sockets, a finished
collective freeing its tensors) and reaches for the interpreter is killed mid-C++ and the rank dies
with SIGABRT ("terminate called without an active exception") after its work is done.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from engine.errors import TrainingError
from engine.utils.device import select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int
    world_size: int
    local_rank: int


def detect_torchrun() -> TorchrunEnv | None:
    """The launcher's environment, or ``None`` when not started by ``torchrun`` (or world size 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise TrainingError(f"Invalid torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from exc
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return None
    return TorchrunEnv(rank=rank, world_size=world, local_rank=local)


@dataclass
class DistributedContext:
    """Rank information and the few collectives the trainer needs; trivial when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over ranks; keys must match on all ranks (the trainer sorts them)."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= self.world_size
        return dict(zip(keys, t.cpu().tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (so cancellation stops all ranks together)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def init_distributed(device: str = "auto") -> tuple[DistributedContext, torch.device]:
    """Join the torchrun process group if there is one, and pick this rank's device.

    An already initialised group (created by the caller) is reused and left for the caller
    to destroy.
    """
    env = detect_torchrun()
    if env is None:
        return DistributedContext(), select_device(device)
    if not dist.is_available():
        raise TrainingError("torchrun started several processes but this PyTorch build has no "
                            "torch.distributed support.")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        select_device(device)  # raises the standard "no GPU" message
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise TrainingError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                                "are visible; use --nproc_per_node ≤ number of GPUs.")
        torch.cuda.set_device(env.local_rank)
        run_device = torch.device("cuda", env.local_rank)
    else:
        run_device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # DDP imports torch._dynamo on first use; imported while a group exists, its tables keep a
        # reference to that group, which destroy_process_group then cannot free (its threads live on).
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend=backend, **({"device_id": run_device} if use_cuda else {}))
        owns = True
    backend = dist.get_backend()
    ctx = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                             local_rank=env.local_rank, backend=backend, owns_group=owns)
    log.info("Distributed training: rank %d/%d (local %d), backend %s, device %s",
             ctx.rank, ctx.world_size, ctx.local_rank, backend, run_device)
    return ctx, run_device


def wrap_model(model: torch.nn.Module, ctx: DistributedContext, device: torch.device,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP-wrap the model (parameters are broadcast from rank 0 here, so all ranks start equal)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def cleanup_distributed(ctx: DistributedContext, barrier: bool = True) -> None:
    """Destroy the group if this module created it, on every rank, while the interpreter is whole.

    The barrier keeps a fast rank from tearing the group down under the others; it is skipped
    after a failure, where the other ranks may never arrive. A DDP wrapper the caller dropped may
    still sit in a reference cycle holding the group; collecting it first lets destroying the group
    join its threads here rather than at interpreter exit.
    """
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            gc.collect()
            dist.destroy_process_group()
