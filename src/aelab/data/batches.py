"""Batches as index slices of an in-memory uint8 tensor: no per-sample Python, no workers."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class IndexedImages(Dataset):
    """A uint8 image tensor indexed by a whole batch of indices at once."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


class EpochBatches(Sampler[torch.Tensor]):
    """Yields index batches; with shuffle, epoch e's order is a permutation seeded by (seed, e).

    Lightning calls set_epoch before each training epoch, so the order depends only on the seed
    and the epoch number, never on how many random numbers were drawn elsewhere. A resumed run
    calls resume_at, so its first iteration continues that epoch's order after the batches the
    interrupted run had already trained on.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
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

    def __iter__(self):
        skip, self.skip = self.skip, 0
        yield from self.order().split(self.batch_size)[skip:]

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


def batch_loader(
    images: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader whose every item is already a whole batch (batch_size=None)."""
    return DataLoader(
        IndexedImages(images),
        sampler=EpochBatches(len(images), batch_size, shuffle, seed),
        batch_size=None,
        num_workers=0,
        pin_memory=pin_memory,
    )
