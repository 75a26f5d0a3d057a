"""Lightning's automatic optimization as documented: schedulers, clipping, accumulation, LBFGS,
checkpoints that load into a task and start new runs."""

from __future__ import annotations

import copy
import json
import math

import lightning as L
import pytest
import torch

from aelab.config import check_config
from aelab.errors import AelabError
from aelab.runtime.train import build, start_from_weights
from aelab.tasks import ColorizationTask, ReconstructionTask
from tests.conftest import compose_config, run_cli


class Probe(L.Callback):
    """The lr at every batch and epoch start, and the gradient norm the optimizer stepped with."""

    def __init__(self) -> None:
        self.step_lrs: list[float] = []
        self.epoch_lrs: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_epoch_start(self, trainer, task) -> None:
        self.epoch_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        self.step_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        grads = [p.grad.flatten() for p in task.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.cat(grads).norm()))


def fitted(image_folder, tmp_path, overrides=(), steps=-1, epochs=1, ckpt_path=None, **options):
    """A task built from the config (same seed, same initial weights) and fitted; no files."""
    base = ["data=folder", f"data.root={image_folder}", f"paths.cache_dir={tmp_path}"]
    cfg = compose_config([*base, "data.batch_size=16", *overrides], tmp_path)
    L.seed_everything(0, verbose=False)
    task, datamodule = build(cfg)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        **options,
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    return task, trainer, probe


def weights(task: L.LightningModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in task.parameters()])


@pytest.mark.slow
def test_cosine_scheduler_steps_once_per_epoch(image_folder, tmp_path):
    _, _, probe = fitted(
        image_folder, tmp_path, ["scheduler=cosine", "trainer.max_epochs=4"], epochs=4
    )
    expected = [1e-3 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]
    assert probe.epoch_lrs == pytest.approx(expected, rel=1e-6)
    assert len(set(probe.step_lrs[:5])) == 1  # constant inside the first epoch


@pytest.mark.slow
def test_onecycle_steps_per_batch_over_the_runs_own_length(image_folder, tmp_path):
    overrides = ["scheduler=onecycle", "scheduler.scheduler.max_lr=0.01"]
    _, trainer, probe = fitted(image_folder, tmp_path, overrides, epochs=3)
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.total_steps == trainer.estimated_stepping_batches == 15
    assert probe.step_lrs[0] == pytest.approx(0.01 / 25)  # OneCycleLR's initial lr
    assert max(probe.step_lrs) == pytest.approx(0.01, rel=1e-2)
    assert probe.step_lrs[-1] < probe.step_lrs[0]  # annealed below the start by the end


def test_plateau_scheduler_monitors_val_loss(image_folder, tmp_path):
    cfg = compose_config(
        ["data=folder", f"data.root={image_folder}", "scheduler=plateau"], tmp_path
    )
    task, _ = build(cfg)
    configured = task.configure_optimizers()
    assert configured["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(
        configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau
    )


@pytest.mark.slow
def test_trainer_clipping_bounds_the_gradient_norm(image_folder, tmp_path):
    _, _, free = fitted(image_folder, tmp_path / "free", steps=3)
    _, _, clipped = fitted(image_folder, tmp_path / "clip", steps=3, gradient_clip_val=1e-3)
    assert min(free.grad_norms) > 1e-3  # so the clipping had something to do
    assert max(clipped.grad_norms) <= 1e-3 * (1 + 1e-5)


@pytest.mark.slow
def test_accumulating_two_batches_of_32_gives_the_weights_of_one_batch_of_64(
    image_folder, tmp_path
):
    one, _, _ = fitted(image_folder, tmp_path / "b64", ["data.batch_size=64"], steps=1)
    two, trainer, _ = fitted(
        image_folder, tmp_path / "b32", ["data.batch_size=32"], steps=1, accumulate_grad_batches=2
    )
    assert trainer.global_step == 1
    assert torch.allclose(weights(one), weights(two), atol=1e-6)
    untrained = weights(
        build(compose_config(["data=folder", f"data.root={image_folder}"], tmp_path))[0]
    )
    assert not torch.allclose(weights(one), untrained, atol=1e-6)


@pytest.mark.slow
def test_the_epoch_training_loss_counts_each_batch_once(image_folder, tmp_path):
    """LBFGS evaluates a batch several times and accumulation divides the loss: the logged
    epoch mean is still the mean of each batch's loss."""
    for name, overrides, options in [
        ("lbfgs", ["optimizer=lbfgs"], {}),
        ("accumulate", [], {"accumulate_grad_batches": 2}),
    ]:
        _, trainer, _ = fitted(image_folder, tmp_path / name, overrides, epochs=1, **options)
        loss = float(trainer.callback_metrics["train/loss"])
        assert math.isfinite(loss) and 0.3 < loss < 1.0, name  # a BCE mean, not 2× or 5× it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer._target_=torch.optim.LBFGS"], "torch.optim.LBFGS takes no argument 'foreach'"),
        (["optimizer=sgd", "+optimizer.betas=[0.9,0.99]"], r"SGD takes no argument 'betas'"),
        (["+optimizer.lrr=1e-3"], r"did you mean optimizer\.lr\?; ~optimizer\.lrr drops it"),
    ],
)
def test_an_argument_the_optimizer_does_not_take_is_refused(overrides, message, tmp_path):
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(AelabError, match=message):
        check_config(cfg)


@pytest.mark.slow
def test_clipping_accumulation_scheduler_and_lbfgs_run_from_the_command_line(
    smoke_overrides, tmp_path
):
    result = run_cli(
        *smoke_overrides,
        "optimizer=lbfgs",
        "scheduler=cosine",
        "trainer.gradient_clip_val=1.0",
        "trainer.accumulate_grad_batches=2",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["test"]["loss"])
    logged = next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "lr-LBFGS" in logged  # LearningRateMonitor, since a scheduler is set


@pytest.mark.parametrize("task_class", [ReconstructionTask, ColorizationTask])
def test_load_from_checkpoint_rebuilds_the_task(task_class, image_folder, tmp_path):
    overrides = [f"task={task_class.name}", "loss=mse", "widths=deep"]
    task, trainer, _ = fitted(image_folder, tmp_path, overrides, steps=2)
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    for weights_only in (None, True):
        loaded = task_class.load_from_checkpoint(path, weights_only=weights_only)
        assert type(loaded) is task_class and loaded.hparams.loss == "mse"
        assert loaded.model.config() == task.model.config()
        assert torch.equal(weights(loaded), weights(task))


def test_init_weights_starts_from_the_checkpoints_network(image_folder, tmp_path):
    task, trainer, _ = fitted(image_folder, tmp_path, steps=2)
    path = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(path)
    fresh, _ = build(compose_config(["data=folder", f"data.root={image_folder}"], tmp_path))
    assert not torch.equal(weights(fresh), weights(task))
    start_from_weights(fresh, str(path))
    assert torch.equal(weights(fresh), weights(task))
    other, _ = build(
        compose_config(["data=folder", f"data.root={image_folder}", "widths=wide"], tmp_path)
    )
    with pytest.raises(AelabError, match=r"other settings than this run's \(widths"):
        start_from_weights(other, str(path))
    colorizer, _ = build(
        compose_config(["data=folder", f"data.root={image_folder}", "task=colorization"], tmp_path)
    )
    with pytest.raises(AelabError, match="trained for reconstruction"):
        start_from_weights(colorizer, str(path))


def test_a_manual_optimization_checkpoint_is_refused_on_resume(image_folder, tmp_path):
    """Checkpoints of the version whose task stepped itself: its step count lives elsewhere."""
    _, trainer, _ = fitted(image_folder, tmp_path, steps=2)
    checkpoint = tmp_path / "old.ckpt"
    trainer.save_checkpoint(checkpoint)
    old = torch.load(checkpoint, weights_only=True)
    old["hyper_parameters"] = {**copy.deepcopy(old["hyper_parameters"]), "gradient_clip_val": None}
    torch.save(old, checkpoint)
    with pytest.raises(AelabError, match=r"manual optimization.*init_weights=PATH"):
        fitted(image_folder, tmp_path, steps=4, ckpt_path=checkpoint)


def test_default_optimizer_updates_exactly_like_plain_adam(image_folder, tmp_path):
    """foreach only batches Adam's loop over parameters: published metrics stay reproducible."""
    overrides = ["data=folder", f"data.root={image_folder}", f"paths.cache_dir={tmp_path}"]
    cfg = compose_config(overrides, tmp_path)
    task, datamodule = build(cfg)
    datamodule.setup("fit")
    inputs, targets = task.split_batch(datamodule.to_model_space(datamodule.splits["train"][:16]))

    def trained(make_optimizer) -> torch.Tensor:
        model = copy.deepcopy(task)
        optimizer = make_optimizer(model)
        for _ in range(5):
            optimizer.zero_grad()
            model.loss_fn(model(inputs), targets).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert task.configure_optimizers().defaults["foreach"] is True
    configured = trained(lambda model: model.configure_optimizers())
    plain = trained(lambda model: torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr))
    assert not torch.equal(configured, torch.cat([p.flatten() for p in task.parameters()]))
    assert torch.equal(configured, plain)


def test_resume_refuses_a_manual_optimization_checkpoint_before_hydra_starts(
    image_folder, tmp_path
):
    from aelab.runtime.resume import resume_arguments

    _, trainer, _ = fitted(image_folder, tmp_path, steps=1)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    trainer.save_checkpoint(last)
    assert resume_arguments([f"resume={run_dir}"])[0].startswith("--config-path")
    old = torch.load(last, weights_only=True)
    old["hyper_parameters"]["gradient_clip_val"] = 1.0
    torch.save(old, last)
    with pytest.raises(AelabError, match=r"manual optimization.*init_weights="):
        resume_arguments([f"resume={run_dir}"])


@pytest.mark.slow
def test_a_bare_torch_scheduler_node_steps_per_epoch(image_folder, tmp_path):
    """The command line a user tries first: +scheduler._target_=... with its arguments."""
    overrides = [
        "+scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "+scheduler.step_size=1",
        "+scheduler.gamma=0.5",
    ]
    _, _, probe = fitted(image_folder, tmp_path, overrides, epochs=3)
    assert probe.epoch_lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])
