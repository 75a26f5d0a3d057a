"""Results that are not results are not "completed": a run that would train no step (or score
nothing) is refused before it starts, and a loss that explodes stops the run as diverged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from aelab.callbacks import StopOnDivergence, TrainingDiverged
from aelab.config.schema import TrainerSchema, config_problems
from aelab.data.batch_limits import check_every_loop_gets_a_batch
from aelab.errors import AelabError
from aelab.runtime import cli
from tests.conftest import compose_config, run_cli
from tests.test_config_validation import aelab_paragraph, run_entry_stderr

# Every way a command line can ask for a run that trains no step, or tests nothing: the setting
# the refusal must name, and the override.
NO_RESULT = [
    ("trainer.limit_train_batches", "+trainer.limit_train_batches=0"),
    ("trainer.limit_train_batches", "+trainer.limit_train_batches=0.0"),
    ("trainer.max_epochs", "trainer.max_epochs=0"),
    ("trainer.max_steps", "+trainer.max_steps=0"),
    ("trainer.max_time", "+trainer.max_time=00:00:00:00"),
    ("trainer.max_time", "+trainer.max_time={seconds:0}"),
    ("trainer.max_time", "+trainer.max_time={}"),
    ("trainer.fast_dev_run", "+trainer.fast_dev_run=true"),
    ("trainer.limit_test_batches", "+trainer.limit_test_batches=0"),
]


@pytest.mark.parametrize(("key", "override"), NO_RESULT)
def test_a_run_without_a_result_is_refused_before_its_dir_exists(key, override, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, stderr = run_entry_stderr(cli.main, override, f"hydra.run.dir={run_dir}", capsys=capsys)
    assert code == 2
    assert f"Invalid setting {key}=" in aelab_paragraph(stderr)
    assert not run_dir.exists()


def test_a_sweep_of_runs_without_results_leaves_no_dir(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code, stderr = run_entry_stderr(
        cli.main, "-m", "+trainer.limit_train_batches=0,0.0", f"hydra.sweep.dir={sweep}",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Invalid setting trainer.limit_train_batches=0" in stderr
    assert not sweep.exists()


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_refuses_to_evaluate_no_batch(split, tmp_path, capsys):
    eval_dir = tmp_path / "eval"
    code, stderr = run_entry_stderr(
        cli.eval_main, "ckpt_path=x.ckpt", f"split={split}", f"+trainer.limit_{split}_batches=0",
        f"hydra.run.dir={eval_dir}", capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert f"trainer.limit_{split}_batches=0: " in aelab_paragraph(stderr)
    assert "no scores to report" in stderr and not eval_dir.exists()


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def steps_lightning_trains(trainer_settings: dict, batches: int) -> int | None:
    """The optimizer steps Lightning itself takes with these settings; None if it refuses them."""
    try:
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, **trainer_settings,
        )  # fmt: skip
        data = torch.utils.data.DataLoader(torch.ones(batches, 2), batch_size=1)
        trainer.fit(Tiny(), train_dataloaders=data)
    except Exception:  # Lightning's own refusal of a value (a negative limit, 1.5 batches)
        return None
    return trainer.global_step


BATCH_LIMITS = st.one_of(
    st.sampled_from([0, 0.0, 1, 1.0, 2, 5, 1.5, -1, 0.01]),
    st.floats(min_value=0.001, max_value=1.0),
)
DURATIONS = st.sampled_from(
    ["00:00:00:00", "00:00:01:00", "1:00:00:00", {"seconds": 0}, {"minutes": 5}, {}]
)


@settings(max_examples=25, deadline=None)
@given(
    max_epochs=st.sampled_from([0, 1, 2]),
    max_steps=st.sampled_from([-1, 0, 1, 3]),
    max_time=st.one_of(st.none(), DURATIONS),
    limit_train_batches=st.one_of(st.none(), BATCH_LIMITS),
    overfit_batches=st.sampled_from([0, 0.0, 1, 0.5]),
)
def test_whatever_the_trainer_settings_a_run_that_starts_trains_a_step(**trainer_settings):
    """The property, with Lightning as the judge: the settings pass aelab's checks (the schema
    before torch, then the batch-limit check once the split sizes are known) exactly when
    Lightning would train at least one step with them."""
    batches = 8
    given_settings = {k: v for k, v in trainer_settings.items() if v is not None}
    trainer_cfg = OmegaConf.create({"trainer": given_settings})
    accepted = not config_problems(trainer_cfg, {"trainer": TrainerSchema})
    if accepted:
        trainer = L.Trainer(accelerator="cpu", logger=False, **given_settings)
        data = SimpleNamespace(
            splits={"train": torch.ones(batches)}, batch_size=1, eval_batch_size=1
        )
        try:
            check_every_loop_gets_a_batch(trainer, data)
        except AelabError as refusal:
            assert "rounds down to 0" in str(refusal)
            accepted = False
    steps = steps_lightning_trains(given_settings, batches)
    if accepted:
        assert steps, given_settings
    elif steps:  # the one conservative refusal: overfit_batches overrides a limit of 0
        assert trainer_settings["limit_train_batches"] == 0, given_settings


@pytest.mark.parametrize(
    ("settings_", "split", "named"),
    [
        ({"limit_train_batches": 0.01}, "train", "trainer.limit_train_batches=0.01"),
        ({"overfit_batches": 0.01}, "train", "trainer.overfit_batches=0.01"),
        ({"limit_val_batches": 0.1}, "val", "trainer.limit_val_batches=0.1"),
        ({"limit_test_batches": 0.1}, "test", "trainer.limit_test_batches=0.1"),
    ],
)
def test_a_fraction_that_rounds_to_no_batch_is_refused_naming_the_sizes(settings_, split, named):
    trainer = L.Trainer(accelerator="cpu", logger=False, **settings_)
    images = {"train": torch.ones(150), "val": torch.ones(40), "test": torch.ones(40)}
    data = SimpleNamespace(splits=images, batch_size=64, eval_batch_size=20)
    with pytest.raises(AelabError) as refusal:
        check_every_loop_gets_a_batch(trainer, data)
    message = str(refusal.value)
    assert message.startswith(f"{named} leaves the {split} loop no batch")
    batches, least = (3, 0.334) if split == "train" else (2, 0.5)  # 150 in 64s; 40 in 20s
    assert f"{len(images[split])} images make {batches} batch(es)" in message
    assert f"at least {named.split('=')[0]}={least}, or " in message


def test_a_split_smaller_than_a_batch_is_one_batch_not_none():
    """No drop_last: 3 images with batch_size=64 are one (partial) batch per epoch."""
    images = {"train": torch.ones(3), "val": torch.ones(1), "test": torch.ones(1)}
    data = SimpleNamespace(splits=images, batch_size=64, eval_batch_size=250)
    check_every_loop_gets_a_batch(L.Trainer(accelerator="cpu", logger=False), data)
    with pytest.raises(AelabError, match="3 images make 1 batch"):
        half = L.Trainer(accelerator="cpu", logger=False, limit_train_batches=0.5)
        check_every_loop_gets_a_batch(half, data)


@pytest.mark.slow
def test_a_fraction_that_rounds_to_no_batch_stops_the_run_before_fit(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        *smoke_overrides, "+trainer.limit_train_batches=0.01", "logger=none",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aelab: trainer.limit_train_batches=0.01 leaves the train loop no batch" in result.stderr
    assert "Traceback" not in result.stderr
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "failed" and "test" not in status
    assert not (run_dir / "checkpoints").exists()


# Per-step training losses recorded from real runs on CIFAR-10 (the JPEG copy): `python train.py
# debug=smoke data=folder data.root=... ` (batches of 64, each epoch's last of 32; 2 epochs) at
# optimizer.lr=1e3, 1, 10, 100 and at the default 1e-3; and fine-tunes of a 1-epoch MSE run
# (data.subset=10000 trainer.max_epochs=1 loss=mse init_weights=its best.ckpt, batches of 128).
EXPLODING = {  # BCE and cross-entropy on logits are unbounded
    "bce": [0.694, 1.1e19, 1.4e21, 3.59e21, 1.32e19, 3.93e11, 564, 585, 1.26e7, 2.27e5, 629],
    "bce, lr=1": [0.694, 3.35e4, 5.5e5, 1.17e6, 5.96e4, 5.79e3, 1.06e4, 9.11e3, 6.51e3, 2.43e3],
    "bce, lr=10": [0.694, 1.21e9, 2.62e11, 1.54e10, 1.16e9, 1.5e7, 4.67e7, 8.75e7, 1.22e8],
    "colorization bce": [0.693, 1.62e21, 139, 287, 399, 324, 153, 83.2, 185, 187, 111, 94.3],
    "colorization ce": [4.63, 1.08e21, 5.67e18, 5.13e19, 1.7e20, 9.18e19, 4.37e18, 1670, 1960],
    "colorization ce, lr=1": [4.63, 1.31e6, 1e4, 1.95e4, 5.93e5, 1.15e4, 5.17, 3.99, 4.74],
}
COLLAPSING = {  # MSE of the sigmoid output is bounded: at lr=1e3 it saturates, it cannot explode
    "mse": [0.0592, 0.287, 0.305, 0.295, 0.279, 0.259, 0.299, 0.292, 0.281, 0.255, 0.295],
    "colorization mse": [0.00287, 0.241, 0.242, 0.24, 0.234, 0.244, 0.243, 0.238, 0.24, 0.239],
}
HEALTHY = {
    "bce": [
        0.694,
        0.694,
        0.693,
        0.693,
        0.693,
        0.692,
        0.692,
        0.693,
        0.692,
        0.691,
        0.691,
        0.691,
        0.691,
        0.691,
        0.69,
        0.689,
    ],
    "mse": [
        0.0592,
        0.0645,
        0.0709,
        0.0644,
        0.0584,
        0.0621,
        0.0675,
        0.0559,
        0.0658,
        0.0597,
        0.0651,
        0.0589,
        0.0609,
        0.0597,
        0.0662,
        0.0622,
    ],
    "colorization bce": [0.693] * 10 + [0.692] + [0.693] * 5,
    "colorization mse": [
        0.00287,
        0.00298,
        0.00215,
        0.00246,
        0.00317,
        0.00268,
        0.00325,
        0.00255,
        0.0029,
        0.00245,
        0.00306,
        0.00275,
        0.00223,
        0.00228,
        0.00276,
        0.0023,
    ],
    "colorization ce": [
        4.63,
        4.85,
        3.81,
        3.97,
        4.8,
        4.46,
        4.89,
        4.27,
        5.08,
        4.19,
        4.76,
        4.53,
        4.0,
        3.95,
        4.54,
        3.83,
    ],
}
# A fine-tune's fresh Adam jolts the trained weights on its first step, then recovers: at 1e-2 it
# ends the epoch at 0.0209, below its start.
FINE_TUNE_JOLTS = {
    "lr=1e-3": [0.0228, 0.0508, 0.0245, 0.0291, 0.0364, 0.0336, 0.0267, 0.0217, 0.0265, 0.0294],
    "lr=3e-3": [0.0228, 0.165, 0.0801, 0.0364, 0.0683, 0.0544, 0.0346, 0.03, 0.039, 0.0459],
    "lr=1e-2": [0.0228, 0.262, 0.237, 0.127, 0.0667, 0.0649, 0.0643, 0.0624, 0.0627, 0.0618],
}  # fmt: skip


def feed(losses: list[float], batch_sizes=None, **callback_settings) -> tuple[int, str] | None:
    """Run the callback over a recorded loss curve; (index, message) of the stop, or None."""
    callback = StopOnDivergence(**callback_settings)
    trainer = SimpleNamespace(current_epoch=0, global_step=0, world_size=1, ckpt_path=None)
    callback.on_train_start(trainer, None)
    sizes = batch_sizes or ([64] * 7 + [32]) * (len(losses) // 8 + 1)
    for index, (loss, size) in enumerate(zip(losses, sizes, strict=False)):
        trainer.current_epoch, trainer.global_step = index // 8, index + 1
        try:
            outputs = {"loss": torch.tensor(loss)}
            callback.on_train_batch_end(trainer, None, outputs, torch.zeros(size, 1), index % 8)
        except TrainingDiverged as stop:
            return index, str(stop)
    return None


@pytest.mark.parametrize("loss", sorted(EXPLODING))
def test_an_exploding_loss_stops_at_its_first_exploded_step(loss):
    index, message = feed(EXPLODING[loss])
    assert index == 1  # the first step after the first update
    start, exploded = EXPLODING[loss][0], EXPLODING[loss][1]
    assert message.startswith(f"The training loss rose to {exploded:.4g} at step 2 (epoch 0")
    assert f"{exploded / start:.3g}× the {start:.4g} the run started from" in message
    assert "explosion_factor=1000: the run diverged" in message and "Lower optimizer.lr" in message


@pytest.mark.parametrize("loss", sorted(HEALTHY))
def test_a_healthy_loss_curve_is_never_stopped_and_stays_far_from_the_bar(loss):
    curve = HEALTHY[loss]
    assert feed(curve) is None
    assert max(curve) / curve[0] < 1.25  # the bar is 1000× the start


@pytest.mark.parametrize("lr", sorted(FINE_TUNE_JOLTS))
def test_a_fine_tunes_first_step_jolt_is_not_an_explosion(lr):
    jolt = FINE_TUNE_JOLTS[lr]
    assert max(jolt) / jolt[0] > 2  # up to 11.5× its start: a bar near 3× would stop them
    assert feed(jolt, batch_sizes=[128] * len(jolt)) is None


@pytest.mark.parametrize("loss", sorted(COLLAPSING))
def test_a_bounded_loss_that_collapses_is_not_an_explosion_unless_the_bar_is_lowered(loss):
    """The documented limit: MSE saturates at a few times its start, where a fine-tune's jolt
    also goes; a user who wants such runs stopped lowers the bar."""
    assert feed(COLLAPSING[loss]) is None
    index, message = feed(COLLAPSING[loss], explosion_factor=3)
    assert index == 1 and "explosion_factor=3: the run diverged" in message


def test_small_batches_are_compared_as_means_of_64_images():
    """Batches of 4: single batches of the healthy MSE run vary more than 3× (easy and hard
    images), their means over 64 images do not; a collapse is still caught, one block later."""
    noisy = [0.06, 0.2, 0.01, 0.19] * 32
    assert max(noisy) / min(noisy) > 3
    assert feed(noisy, batch_sizes=[4] * len(noisy), explosion_factor=3) is None
    collapsed = [0.06, 0.05] * 8 + [0.29] * 32
    index, _ = feed(collapsed, batch_sizes=[4] * len(collapsed), explosion_factor=3)
    assert index == 23  # 8 of the 16 batches in the window at 0.29: (8 × 0.055 + 8 × 0.29) / 16


def test_an_epochs_short_last_batch_is_checked_with_the_step_before_it():
    """80 images in 64s: the 16-image last batch explodes; its window reaches back one step, so
    the run stops before the epoch's checkpoint."""
    index, message = feed([0.69, 1e19, 600.0], batch_sizes=[64, 16, 64])
    assert index == 1 and "rose to 2e+18 at step 2 " in message


def test_the_bar_is_a_setting_and_null_turns_it_off():
    assert feed(EXPLODING["bce, lr=1"])[0] == 1  # 4.8e4× its start
    assert feed(EXPLODING["bce, lr=1"], explosion_factor=1e5)[0] == 2  # 7.9e5×
    assert feed(EXPLODING["bce, lr=1"], explosion_factor=1e7) is None  # 1.7e6× at its highest
    assert feed(EXPLODING["bce"], explosion_factor=None) is None
    assert feed([1.0, float("nan")], explosion_factor=None)[1].startswith(
        "The training loss became NaN or infinite at step 2"
    )


def test_off_the_cpu_the_flags_wait_for_the_check_and_name_the_exploded_step():
    """The accelerator / DDP path: flags stay pending until the step-checkpoint cadence (here 4),
    then the ranks agree; the message names the step that exploded, not the step of the check."""
    agree = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)
    trainer = SimpleNamespace(current_epoch=0, global_step=0, world_size=2, strategy=agree)
    callback = StopOnDivergence(check_every_n_steps=4)
    for index, loss in enumerate([0.69, 0.68, 1e6, 1e6, 1e6]):
        trainer.global_step = index + 1
        try:
            callback.on_train_batch_end(
                trainer, None, {"loss": torch.tensor(loss)}, torch.zeros(64, 1), index
            )
        except TrainingDiverged as stop:
            assert index == 3  # the check at global step 4
            assert "rose to 1e+06 at step 3 (epoch 0, batch 2 " in str(stop)
            return
    pytest.fail("not stopped")


def test_a_resumed_runs_saved_config_without_a_result_is_refused(tmp_path, capsys):
    """resume= (and DDP ranks) compose the run's saved config: the same schema refuses it, and the
    run dir, which holds a run, stays."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    cfg = compose_config(["+trainer.limit_train_batches=0", f"resume={run_dir}"], run_dir)
    with pytest.raises(SystemExit) as stop:
        cli.refuse_invalid_settings(cfg, "train")
    assert stop.value.code == 2
    assert "trainer.limit_train_batches=0: " in aelab_paragraph(capsys.readouterr().err)
    assert (run_dir / "checkpoints").is_dir()


def test_a_resumed_run_keeps_the_reference_of_its_start():
    first = StopOnDivergence()
    feed_one = SimpleNamespace(current_epoch=0, global_step=1, world_size=1, ckpt_path=None)
    first.on_train_batch_end(feed_one, None, {"loss": torch.tensor(0.06)}, torch.zeros(64, 1), 0)
    state = first.state_dict()
    assert state == {"reference": pytest.approx(0.06)}
    resumed = StopOnDivergence()
    resumed.load_state_dict(state)
    resumed.on_train_start(SimpleNamespace(ckpt_path="last.ckpt"), None)
    with pytest.raises(TrainingDiverged, match=r"the 0\.06 the run started from"):
        resumed.on_train_batch_end(
            feed_one, None, {"loss": torch.tensor(600.0)}, torch.zeros(64, 1), 0
        )


@pytest.mark.slow
def test_adam_at_lr_1e3_ends_diverged_not_completed(smoke_overrides, tmp_path):
    """The issue's case: it ended "completed" with a test BCE of 1.9e15."""
    run_dir = tmp_path / "run"
    result = run_cli(
        *smoke_overrides, "optimizer.lr=1e3", "logger=none", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "diverged"
    assert status["error"].startswith("The training loss rose to ")
    assert "aelab: The training loss rose to " in result.stderr
    assert not list((run_dir / "checkpoints").glob("*.ckpt"))
