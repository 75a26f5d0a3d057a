"""A stop signal saves only where the training state is whole."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest

from aelab.callbacks import SaveOnSignal, TrainingInterrupted
from aelab.runtime.train import build
from tests.conftest import compose_config


class SignalAt(L.Callback):
    """Sends SIGTERM right after batch `at` of the first epoch."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if batch_idx == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize(("accumulate", "at", "stops_at_step"), [(1, 0, 1), (2, 0, 1), (2, 1, 1)])
def test_a_signal_inside_an_accumulation_window_saves_after_its_optimizer_step(
    accumulate, at, stops_at_step, image_folder, tmp_path
):
    cfg = compose_config(
        ["data=folder", f"data.root={image_folder}", "data.batch_size=8", "data.subset=null"],
        tmp_path,
    )
    task, datamodule = build(cfg)
    saver = SaveOnSignal(dirpath=str(tmp_path / "checkpoints"))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        callbacks=[SignalAt(at), saver],  # the signal comes before the saver looks
    )
    with pytest.raises(TrainingInterrupted):
        trainer.fit(task, datamodule=datamodule)
    assert trainer.global_step == stops_at_step
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the user's Trainer: put back
