"""One LightningDataModule for every source and both tasks.

sources → uint8 tensors (decoded once) → seeded splits → index-slice batches → after transfer to
the device: float in [0, 1], and normalised Lab when the task asks for it (color_space=lab).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from aelab.config.schema import check_arguments, folder_root_needed
from aelab.data.batches import SlicedBatches, batch_loader
from aelab.data.color import rgb_to_lab_normalized
from aelab.data.sources import (
    Listing,
    cifar10_listing,
    decode_image_folder,
    list_image_folder,
    load_cifar10,
)
from aelab.data.splits import check_split_settings, split_indices, take_splits
from aelab.errors import AelabError

log = logging.getLogger(__name__)


COLOR_SPACES = ("rgb", "lab")


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "cifar10",
        root: str | None = "data",
        download: bool = True,
        image_size: int = 32,
        split: str = "pooled",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        subset: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 250,
        shuffle_seed: int = 0,
        color_space: str = "rgb",
        cache_dir: str | None = None,
        on_device: bool = True,
    ) -> None:
        super().__init__()
        check_arguments("data", source=source, image_size=image_size, split=split)
        check_arguments("data", batch_size=batch_size, eval_batch_size=eval_batch_size)
        if color_space not in COLOR_SPACES:
            raise AelabError(
                f"data.color_space must be one of {list(COLOR_SPACES)}, got {color_space!r}."
            )
        if not root:
            raise AelabError(folder_root_needed(source) + ".")
        check_split_settings(split, val_fraction, test_fraction, subset)
        self.source, self.root, self.download = source, root, download
        self.image_size, self.cache_dir = image_size, cache_dir
        self.split, self.split_seed, self.subset = split, split_seed, subset
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.shuffle_seed, self.color_space = shuffle_seed, color_space
        self.on_device = on_device
        self.splits: dict[str, torch.Tensor] = {}
        self.split_indices: dict[str, torch.Tensor] = {}  # into the parts laid end to end
        self.listing: Listing | None = None  # the files the images came from (data identity)
        self._device_splits: dict[str, torch.Tensor] = {}
        self._resume_position: tuple[int, int] | None = None
        self._trained: tuple[int, int] = (0, 0)  # (epoch, batches of it trained on)

    def prepare_data(self) -> None:
        """Download once (Lightning calls this on one process only)."""
        if self.source == "cifar10" and self.download:
            load_cifar10(self.root, download=True)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self._load_splits()
        self._check_every_rank_gets_images()

    def _load_splits(self) -> None:
        if self.source == "cifar10":
            if self.image_size != 32:
                raise AelabError(
                    f"data=cifar10 images are 32×32, but data.image_size={self.image_size}; "
                    "leave it at 32 or use data=folder, which resizes."
                )
            parts = load_cifar10(self.root, download=False)
            self.listing = cifar10_listing(self.root)
        else:
            self.listing = list_image_folder(self.root)
            parts = decode_image_folder(self.listing, self.image_size, self.cache_dir)
        part_sizes = {part: len(images) for part, images in parts.items()}
        self.split_indices = split_indices(
            part_sizes,
            self.split,
            self.val_fraction,
            self.test_fraction,
            self.split_seed,
            self.subset,
        )
        self.splits = take_splits(parts, self.split_indices)
        sizes = ", ".join(f"{name} {len(images):,}" for name, images in self.splits.items())
        log.info("Data: %s from %s, %s split: %s", self.source, Path(self.root), self.split, sizes)

    def _check_every_rank_gets_images(self) -> None:
        """Under DDP every process joins each epoch's metric sync, so each needs at least one image
        of every split; a process left without one would make the others wait forever."""
        ranks = self.trainer.world_size if self.trainer else 1
        small = {name: len(images) for name, images in self.splits.items() if len(images) < ranks}
        if small:
            listed = ", ".join(f"{name} {size}" for name, size in small.items())
            raise AelabError(
                f"Split(s) with fewer images than the {ranks} DDP processes: {listed}. Every "
                "process needs at least one image of each split; use fewer processes "
                "(trainer.devices) or more images (data.subset, data.val_fraction, "
                "data.test_fraction)."
            )

    def split_sizes(self) -> dict[str, int]:
        return {name: len(images) for name, images in self.splits.items()}

    def train_dataloader(self) -> SlicedBatches:
        loader = self._loader("train", self.batch_size, shuffle=True)
        if self._resume_position is not None:
            loader.sampler.resume_at(*self._resume_position)
            self._resume_position = None
        return loader

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the epoch order, saved in every checkpoint.

        Counted as batches reach the model (on_after_batch_transfer), not as the sampler hands
        them out: Lightning fetches one batch ahead.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch, done = self._trained
        return {
            "train_epoch": trainer.current_epoch,
            "train_batches_done": done if epoch == trainer.current_epoch else 0,
            "ranks": trainer.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """A resumed run's first training loader continues the epoch after the batches done.

        Only on as many processes as saved it: the batches done are per-rank shards of the order.
        """
        if not state_dict:
            return
        ranks, saved = self.trainer.world_size, state_dict.get("ranks", 1)
        if ranks != saved:
            raise AelabError(
                f"This checkpoint was saved by a run on {saved} DDP process(es) and is being "
                f"resumed on {ranks}; its place in the epoch is a per-process position, so resume "
                f"it on {saved} (trainer.devices × trainer.num_nodes = {saved})."
            )
        self._resume_position = (state_dict["train_epoch"], state_dict["train_batches_done"])
        self._trained = self._resume_position

    def val_dataloader(self) -> SlicedBatches:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> SlicedBatches:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> SlicedBatches:
        """On a GPU the whole uint8 split moves to it once and batches are sliced there; under
        DDP each rank iterates its own shard of the same order (see EpochBatches)."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        images = self.splits[split]
        if device.type == "cuda" and self.on_device:
            if split not in self._device_splits:
                self._device_splits[split] = images.to(device)
            images = self._device_splits[split]
        pin = device.type == "cuda" and not self.on_device
        if shuffle and trainer is not None and trainer.overfit_batches:
            shuffle = False  # trainer.overfit_batches: the same first batches in every epoch
        rank, ranks = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return batch_loader(images, batch_size, shuffle, self.shuffle_seed, pin, rank, ranks)

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch, done = self._trained
            now = trainer.current_epoch
            self._trained = (now, done + 1 if epoch == now else 1)
        return self.to_model_space(batch)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB on the device → float RGB in [0, 1], or normalised Lab for colorization."""
        images = images.float().div_(255)
        return rgb_to_lab_normalized(images) if self.color_space == "lab" else images
