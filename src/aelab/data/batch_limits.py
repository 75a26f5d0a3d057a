"""Whether the trainer's batch limits leave each loop of a run a batch, once the splits are known.

A fraction of a split's batches (trainer.limit_train_batches=0.01, overfit_batches=0.05) can round
down to none on a small split; the settings alone cannot tell (aelab.config.schema refuses 0), the
split sizes can. Lightning would stop inside fit with its own traceback, and for the test loop only
after all of training.
"""

from __future__ import annotations

import math

import lightning as L

from aelab.data.batches import EpochBatches
from aelab.data.datamodule import ImageDataModule
from aelab.errors import AelabError

LOOPS = (
    ("train", "limit_train_batches", "train no step, and test the untrained weights as its result"),
    ("val", "limit_val_batches", "have no validation loss to choose best.ckpt by"),
    ("test", "limit_test_batches", "have no test scores"),
)


def check_every_loop_gets_a_batch(
    trainer: L.Trainer, datamodule: ImageDataModule, scored: str | None = None
) -> None:
    """Raise AelabError, before fit, when a loop that runs would get no batch from its limit.

    `scored`: eval.py's split, the one loop it runs (its limit of 0 is no batch, not a skip).
    """
    for split, setting, without in LOOPS:
        if scored is not None:
            if split != scored:
                continue
            without = f"have no {split} scores"
        limit = getattr(trainer, setting)  # Lightning has put overfit_batches here when set
        if split not in datamodule.splits or (split == "val" and limit == 0 and not scored):
            continue  # splits not loaded on this rank; limit_val_batches=0: no validation asked
        training = split == "train"
        batch_size = datamodule.batch_size if training else datamodule.eval_batch_size
        images = len(datamodule.splits[split])
        per_process = EpochBatches(
            images, batch_size, training, rank=trainer.global_rank, ranks=trainer.world_size,
            same_steps=training,
        )  # fmt: skip
        batches = len(per_process)
        if (min(batches, limit) if isinstance(limit, int) else int(batches * limit)) > 0:
            continue
        named = "overfit_batches" if trainer.overfit_batches and split != "test" else setting
        fraction = math.ceil(1000 / batches) / 1000  # the smallest that leaves a batch
        least = f"at least trainer.{named}={fraction:g}, or " if fraction < 1 else ""
        raise AelabError(
            f"trainer.{named}={limit} leaves the {split} loop no batch: the {split} split's "
            f"{images:,} images make {batches} batch(es) per process, and {limit} of them rounds "
            f"down to 0, so the run would {without}. Use {least}a whole number of batches "
            f"(trainer.{named}=1)."
        )
