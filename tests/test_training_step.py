"""The task steps its optimizer itself: the same weights as Lightning's automatic optimization."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.runtime.train import build
from aelab.tasks import ReconstructionTask
from tests.conftest import compose_config


class AutomaticReconstruction(ReconstructionTask):
    """The task as Lightning's automatic optimization would run it: training_step returns the
    loss and the Trainer backpropagates, clips and steps."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = True

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        return self.loss_fn(self(inputs), targets)


class StepAtStart(L.Callback):
    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self.global_step = trainer.global_step


def fitted(image_folder, tmp_path, task_overrides, steps, trainer_options=(), ckpt_path=None):
    """A task built from the config (same seed, same initial weights) and fitted for `steps`."""
    overrides = ["data=folder", f"data.root={image_folder}", f"paths.cache_dir={tmp_path}"]
    cfg = compose_config([*overrides, "data.batch_size=16", *task_overrides], tmp_path)
    L.seed_everything(0, verbose=False)
    task, datamodule = build(cfg)
    probe = StepAtStart()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        **dict(trainer_options),
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    return task, trainer, probe


def weights(task: L.LightningModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in task.parameters()])


AUTOMATIC = f"task._target_={__name__}.AutomaticReconstruction"


@pytest.mark.parametrize(
    ("clip", "algorithm", "precision"),
    [
        (None, "norm", "32-true"),
        (1e-4, "norm", "32-true"),
        (1e-3, "value", "32-true"),
        (1e-4, "norm", "bf16-mixed"),
    ],
)
def test_the_task_step_gives_the_weights_of_lightnings_automatic_optimization(
    clip, algorithm, precision, image_folder, tmp_path
):
    """Bit for bit, with and without clipping, in float32 and under bf16 autocast: published
    results stay reproducible."""
    steps, mode = 6, {"precision": precision}
    clipping = [f"+task.gradient_clip_val={clip}", f"+task.gradient_clip_algorithm={algorithm}"]
    own, trainer, _ = fitted(image_folder, tmp_path / "own", clipping if clip else [], steps, mode)
    lightning_clipping = {"gradient_clip_val": clip, "gradient_clip_algorithm": algorithm, **mode}
    automatic, _, _ = fitted(
        image_folder, tmp_path / "auto", [AUTOMATIC], steps, lightning_clipping
    )
    assert not own.automatic_optimization and trainer.global_step == steps
    assert torch.equal(weights(own), weights(automatic))
    if clip:  # the clipping did something, so the equality above covers it
        unclipped, _, _ = fitted(image_folder, tmp_path / "unclipped", [], steps, mode)
        assert not torch.equal(weights(own), weights(unclipped))


def test_a_checkpoint_saved_under_automatic_optimization_resumes_at_its_step(
    image_folder, tmp_path
):
    """Runs started before the task stepped itself count their steps where Lightning's automatic
    optimization does; on resume the count carries over, so step checkpoints keep their cadence."""
    _, trainer, _ = fitted(image_folder, tmp_path / "before", [AUTOMATIC], steps=3)
    checkpoint = tmp_path / "before.ckpt"
    trainer.save_checkpoint(checkpoint)
    _, resumed, probe = fitted(image_folder, tmp_path / "after", [], steps=5, ckpt_path=checkpoint)
    assert probe.global_step == 3 and resumed.global_step == 5


def test_a_resumed_run_with_trainer_clipping_is_told_to_edit_its_saved_config(
    image_folder, tmp_path
):
    """resume=RUN_DIR takes no overrides, so the message points at the run's own config."""
    overrides = ["data=folder", f"data.root={image_folder}", "+trainer.gradient_clip_val=1"]
    cfg = compose_config([*overrides, f"resume={tmp_path}"], tmp_path)
    with pytest.raises(AelabError, match=r"\.hydra/config\.yaml.*resume again"):
        build(cfg)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gradient_clip_val": -1.0}, "gradient_clip_val must be a number ≥ 0"),
        ({"gradient_clip_val": "big"}, "gradient_clip_val must be a number ≥ 0"),
        ({"gradient_clip_algorithm": "l2"}, "'norm'"),
    ],
)
def test_clipping_settings_are_checked_when_the_task_is_built(options, message):
    with pytest.raises(AelabError, match=message):
        ReconstructionTask(ConvAutoEncoder(widths=[4]), **options)
