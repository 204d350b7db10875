"""Data loading for the training loop: batches whose order depends only on (seed, epoch, rank), so a
resumed or distributed run sees the same data as an uninterrupted one."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler, Subset)

from engine.errors import TrainingError
from engine.training.config import TrainerConfig


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (run seed, epoch): shuffling of epoch e never depends on history."""
    return int(np.random.SeedSequence([seed % (2**32), epoch]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy/random in each worker follow the worker's torch seed."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


@dataclass
class LoaderContext:
    """Handed to a data-loader factory: which epoch, which rank, and a generator seeded for it."""

    epoch: int
    seed: int
    rank: int
    world_size: int
    train: bool
    config: TrainerConfig
    generator: torch.Generator

    def loader(self, dataset: Dataset, batch_size: int | None = None, shuffle: bool | None = None,
               collate_fn: Callable[[list[Any]], Any] | None = None, **kwargs: Any) -> DataLoader:
        """The trainer's standard loader (rank sharding, per-epoch seeding) for ``dataset``."""
        return build_loader(dataset, self, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                            **kwargs)


def build_loader(dataset: Dataset, ctx: LoaderContext, batch_size: int | None = None,
                 shuffle: bool | None = None, drop_last: bool | None = None,
                 collate_fn: Callable[[list[Any]], Any] | None = None, **kwargs: Any) -> DataLoader:
    """DataLoader whose order depends only on (seed, epoch, rank), so a resumed run sees the same batches.

    Training under DDP uses :class:`DistributedSampler` (``set_epoch`` each epoch); validation is
    sharded without padding (``rank::world_size``) so no case is counted twice.
    """
    cfg = ctx.config
    if batch_size is None:
        batch_size = cfg.batch_size if ctx.train else (cfg.val_batch_size or cfg.batch_size)
    shuffle = (cfg.shuffle if ctx.train else False) if shuffle is None else shuffle
    drop_last = (cfg.drop_last if ctx.train else False) if drop_last is None else drop_last
    sampler = None
    if isinstance(dataset, IterableDataset):
        pass  # the dataset shards and orders itself
    elif ctx.world_size > 1 and ctx.train:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                     seed=cfg.seed, drop_last=drop_last)
        sampler.set_epoch(ctx.epoch)
    elif ctx.world_size > 1:
        dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]
        sampler = SequentialSampler(dataset)
    else:
        sampler = RandomSampler(dataset, generator=ctx.generator) if shuffle else SequentialSampler(dataset)
    num_workers = kwargs.pop("num_workers", cfg.num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=collate_fn, num_workers=num_workers, generator=ctx.generator,
                      worker_init_fn=seed_worker if num_workers else None,
                      pin_memory=kwargs.pop("pin_memory", torch.cuda.is_available()), **kwargs)


#: ``train_data``/``val_data``: a Dataset, a factory ``(LoaderContext) -> iterable of batches``,
#: or a ready iterable (re-iterated each epoch; shuffling then is the caller's business).
DataSource = Dataset | Callable[[LoaderContext], Iterable[Any]] | Iterable[Any]


def epoch_batches(source: DataSource, ctx: LoaderContext,
                  collate_fn: Callable[[list[Any]], Any] | None = None) -> Iterable[Any]:
    """The batches of one epoch from a Dataset (the standard loader), a factory or a ready iterable."""
    if isinstance(source, Dataset):
        return build_loader(source, ctx, collate_fn=collate_fn)
    if callable(source):
        return source(ctx)
    if isinstance(source, Iterable):
        return source
    raise TrainingError(f"Training/validation data must be a Dataset, a loader factory or an iterable; "
                        f"got {type(source).__name__}.")
