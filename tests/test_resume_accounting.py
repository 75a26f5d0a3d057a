"""A run killed mid-epoch and resumed logs the same epoch numbers as the uninterrupted run: the
epoch's training loss over all its images, and its time as the time actually spent. And the
divergence stop says truly whether any checkpoint can be resumed from."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from aelab.history import read_history
from tests.conftest import CLEAN_ENVIRONMENT, make_image_folder, without_test_hooks

REPO = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 20  # 80 train images in batches of 4


@pytest.fixture(scope="module")
def run_args(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("accounting")
    images = make_image_folder(root / "images")
    return [
        "debug=smoke", "data=folder", f"data.root={images}", "data.subset=null",
        f"paths.cache_dir={root / 'cache'}", "trainer.accelerator=cpu", "threads=1",
        "data.batch_size=4", "trainer.max_epochs=2", "logger=csv",
        "callbacks.step_checkpoint.every_n_train_steps=5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    finish(*run_args, f"hydra.run.dir={run_dir}")
    return run_dir


class KillAtFirstValidation(L.Callback):
    """SIGKILLs a fresh run as epoch 0's validation starts, after the step checkpoint of the
    epoch's last batch (every_n_train_steps=5, 20 batches)."""

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=CLEAN_ENVIRONMENT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args: str) -> None:
    process = start(*args)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]


def epoch_losses(run_dir: Path) -> dict[int, float]:
    """train/loss per epoch from the CSV logger's metrics.csv; each epoch logged exactly once."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    epochs = [int(row["epoch"]) for row in rows]
    assert len(epochs) == len(set(epochs)), epochs
    return {int(row["epoch"]): float(row["train/loss"]) for row in rows}


def assert_same_epoch_numbers(resumed: Path, reference: Path) -> list[float]:
    """The same train/loss per epoch (the same float32 sums, so equal to float precision), as many
    epoch times, none out of proportion; the resumed run's epoch seconds."""
    expected, got = epoch_losses(reference), epoch_losses(resumed)
    assert sorted(expected) == sorted(got) == [0, 1]
    for epoch, loss in expected.items():
        assert got[epoch] == pytest.approx(loss, rel=1e-6, abs=0), epoch
    history = read_history(resumed / "history.jsonl")  # the logger-independent one: each epoch once
    assert [row["epoch"] for row in history] == [0, 1]
    assert [row["train/loss"] for row in history] == pytest.approx(
        [expected[0], expected[1]], rel=1e-6, abs=0
    )
    timing = [json.loads((d / "timing.json").read_text()) for d in (reference, resumed)]
    reference_seconds, resumed_seconds = (t["seconds_per_epoch"] for t in timing)
    assert len(resumed_seconds) == 2
    assert max(resumed_seconds) < 10 * max(reference_seconds)
    return resumed_seconds


@pytest.mark.slow
def test_a_run_killed_mid_epoch_logs_the_uninterrupted_epoch_loss_and_the_real_epoch_time(
    run_args, reference, tmp_path
):
    run_dir = tmp_path / "run"
    process = start(*run_args, f"hydra.run.dir={run_dir}")
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    saved = torch.load(last, map_location="cpu", weights_only=True)
    batches_done = saved["ImageDataModule"]["train_batches_done"]
    assert saved["ImageDataModule"]["train_epoch"] == 0 and 0 < batches_done < BATCHES_PER_EPOCH
    # Saved in a callback's on_train_batch_end, before the task's: that batch is counted too.
    assert saved["aelab_epoch_loss"]["images"] == 4 * batches_done
    elapsed_before_kill = saved["callbacks"]["EpochTimer"]["epoch_elapsed"]
    assert elapsed_before_kill > 0

    finish(f"resume={run_dir}")

    resumed_seconds = assert_same_epoch_numbers(run_dir, reference)
    assert resumed_seconds[0] > elapsed_before_kill  # the time before the kill is counted


@pytest.mark.slow
def test_a_run_killed_after_its_epochs_last_step_checkpoint_logs_that_epoch_once(
    run_args, reference, tmp_path
):
    """Resumed from a step checkpoint of an epoch's last batch, Lightning starts the next epoch
    without that epoch's end or the next one's start; neither epoch's numbers may mix."""
    run_dir = tmp_path / "run"
    killer = f"+callbacks.killer._target_={__name__}.KillAtFirstValidation"
    process = start(*run_args, killer, f"hydra.run.dir={run_dir}")
    assert process.wait(timeout=300) == -signal.SIGKILL, process.stderr.read()[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == BATCHES_PER_EPOCH
    partial = saved["aelab_epoch_loss"]
    assert (partial["epoch"], partial["images"]) == (0, 80) and partial["sum"] > 0
    elapsed_before_kill = saved["callbacks"]["EpochTimer"]["epoch_elapsed"]

    without_test_hooks(run_dir)
    finish(f"resume={run_dir}")

    resumed_seconds = assert_same_epoch_numbers(run_dir, reference)
    assert resumed_seconds[0] == pytest.approx(elapsed_before_kill)


def fit_until_nan(tmp_path: Path, nan_from_call: int, **trainer_options) -> str:
    """A tiny fit whose training loss turns NaN at the given call; the divergence message."""
    from torch.utils.data import DataLoader

    from aelab.callbacks import StopOnDivergence, TrainingDiverged
    from aelab.models import ConvAutoEncoder
    from aelab.tasks import ReconstructionTask

    torch.manual_seed(0)
    task, calls = ReconstructionTask(ConvAutoEncoder(widths=[4, 4])), []
    loss_fn = task.loss_fn

    def turning_nan(logits, targets):
        calls.append(1)
        loss = loss_fn(logits, targets)
        return loss * float("nan") if len(calls) >= nan_from_call else loss

    task.loss_fn = turning_nan
    callbacks = [StopOnDivergence(), *trainer_options.pop("callbacks", [])]
    resume_from = trainer_options.pop("ckpt_path", None)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=callbacks, **trainer_options,
    )  # fmt: skip
    data = DataLoader(torch.rand(16, 3, 8, 8), batch_size=2)
    with pytest.raises(TrainingDiverged) as stop:
        trainer.fit(task, train_dataloaders=data, ckpt_path=resume_from)
    return str(stop.value)


def test_the_divergence_message_says_whether_a_checkpoint_was_written(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    before_any = fit_until_nan(tmp_path / "none", 3, enable_checkpointing=False)
    assert "at step 3 (epoch 0, batch 2 " in before_any
    assert "no checkpoint was written yet" in before_any and "hold" not in before_any

    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    after_saves = fit_until_nan(tmp_path / "saved", 4, callbacks=[saving])
    assert "at step 4 (epoch 0, batch 3 " in after_saves
    assert "checkpoints hold the last finite weights" in after_saves
    assert "no checkpoint" not in after_saves
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3

    resumed = fit_until_nan(tmp_path / "resumed", 1, enable_checkpointing=False, ckpt_path=last)
    assert "at step 4 (epoch 0, batch 3 " in resumed
    assert "checkpoints hold the last finite weights" in resumed
