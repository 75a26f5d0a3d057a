"""Batches as index slices of an in-memory uint8 tensor: no per-sample Python, no workers.

Under DDP each rank iterates its own shard of the same order (EpochBatches knows its rank), so
Lightning's DistributedSampler is switched off (trainer.use_distributed_sampler=false).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatches(Sampler[torch.Tensor]):
    """Yields index batches; with shuffle, epoch e's order is a permutation seeded by (seed, e).

    Lightning calls set_epoch before each training epoch, so the order depends only on the seed
    and the epoch number, never on how many random numbers were drawn elsewhere. A resumed run
    calls resume_at, so its first iteration continues that epoch's order after the batches the
    interrupted run had already trained on.

    With `ranks` > 1 (DDP), step k of every rank comes from the same block of the order, the
    k-th `batch_size × ranks` images, cut into one part per rank, so the ranks' shards are
    disjoint and cover the order. Training needs `same_steps`: each step all-reduces the gradients,
    so a rank with one batch more would wait forever; a last block with fewer images than ranks is
    then left out of that epoch (at most ranks − 1 images). Evaluation has no per-step collective,
    so there a rank with nothing left just stops one batch early.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        ranks: int = 1,
        same_steps: bool = True,
    ) -> None:
        if not 0 <= rank < ranks:
            raise ValueError(f"rank must be in [0, {ranks}), got {rank}")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.ranks, self.same_steps = rank, ranks, same_steps
        self.epoch = 0
        self.skip = 0  # batches of this epoch to leave out of the next iteration only

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue `epoch` after its first `batches_done` batches (a whole epoch: the next one)."""
        if batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.epoch, self.skip = epoch, batches_done

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def batches(self) -> list[torch.Tensor]:
        """This rank's index batches of the current epoch, in order."""
        blocks = self.order().split(self.batch_size * self.ranks)
        if self.ranks == 1:  # one process: the blocks are the batches (saves ~400 splits an epoch)
            return list(blocks) if self.size else []
        parts = [block.tensor_split(self.ranks)[self.rank] for block in blocks]
        if parts and (not len(parts[-1]) or (self.same_steps and len(blocks[-1]) < self.ranks)):
            parts.pop()
        return parts

    def __iter__(self):
        skip, self.skip = self.skip, 0
        yield from self.batches()[skip:]

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size * self.ranks)
        keeps_last = rest >= self.ranks or (rest > self.rank and not self.same_steps)
        return full + (rest > 0 and keeps_last)


class SlicedBatches:
    """The batches `images[indices]` for the index batches of `sampler`, in its order.

    A plain iterable, not a DataLoader: Lightning takes any iterable and finds `.sampler` on it for
    set_epoch as on a DataLoader, and a DataLoader's per-batch machinery (its iterator, profiler
    op, fetcher and collate step) has nothing to do when every item is already a whole batch.
    """

    batch_sampler = None  # Lightning reads it beside .sampler, as on a DataLoader without one

    def __init__(
        self, images: torch.Tensor, sampler: EpochBatches, pin_memory: bool = False
    ) -> None:
        self.images, self.sampler, self.pin_memory = images, sampler, pin_memory

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator: Lightning calls iter() once just to check the type, and that call must not
        # consume a resumed run's skip (EpochBatches.__iter__ runs only at the first next()).
        for indices in self.sampler:
            batch = self.images[indices]
            yield batch.pin_memory() if self.pin_memory else batch

    def __len__(self) -> int:
        return len(self.sampler)


def batch_loader(
    images: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    ranks: int = 1,
) -> SlicedBatches:
    """Whole batches of `images`; shuffled loaders (training) give every rank the same number."""
    sampler = EpochBatches(len(images), batch_size, shuffle, seed, rank, ranks, same_steps=shuffle)
    return SlicedBatches(images, sampler, pin_memory)
