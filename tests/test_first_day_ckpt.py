"""train.py ckpt_path= and init_weights= as Lightning users know them: ckpt_path= continues a
checkpoint's full training state into a new run dir (Lightning's fit(ckpt_path=)), the checkpoint's
run untouched; init_weights= starts a new run at epoch 0 from its network weights only. A command
line that means the weights-only start with ckpt_path= is refused with a hint to init_weights=."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from aelab.callbacks import CheckpointPathsInRunDir
from aelab.errors import AelabError
from aelab.runtime import cli
from aelab.runtime.continuation import refuse_other_settings
from tests.conftest import compose_config, run_cli, run_entry


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too), by its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def same_data(image_folder: Path, tmp_path: Path) -> list[str]:
    """The data and smoke settings of the session's `trained` run (another cache dir)."""
    return ["debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
            f"paths.cache_dir={tmp_path / 'cache'}", "trainer.accelerator=cpu", "~local"]  # fmt: skip


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def optimizer_steps(checkpoint: dict) -> int:
    """Adam's own step count, as the optimizer state in the checkpoint holds it."""
    states = checkpoint["optimizer_states"][0]["state"]
    return int(states[0]["step"])


def epochs_logged(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return sorted({int(row["epoch"]) for row in csv.DictReader(file) if row.get("train/loss")})


@pytest.fixture
def source(trained) -> Path:
    """The session's smoke run (2 epochs), read only."""
    return trained("reconstruction")


@pytest.mark.slow
def test_ckpt_path_continues_the_full_state_into_a_new_run_dir(source, image_folder, tmp_path):
    before = tree(source)
    last = source / "checkpoints" / "last.ckpt"
    done = saved(last)
    steps_per_epoch = done["global_step"] // 2
    new = tmp_path / "continued"
    result = run_cli(*same_data(image_folder, tmp_path), f"ckpt_path={last}",
                     "trainer.max_epochs=3", "logger=csv", f"hydra.run.dir={new}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    assert epochs_logged(new) == [2]  # the new run's first (and only) epoch is the third
    continued = saved(new / "checkpoints" / "last.ckpt")
    assert continued["global_step"] == 3 * steps_per_epoch
    assert optimizer_steps(done) == 2 * steps_per_epoch
    assert optimizer_steps(continued) == 3 * steps_per_epoch  # Adam's state went on
    best = new / "checkpoints" / "best.ckpt"  # the new run's own best, in its own dir
    assert best.is_file()
    metrics = json.loads((new / "metrics.json").read_text())
    assert (
        metrics["status"] == "completed" and metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    )
    assert metrics["continued_checkpoint"] == str(last) and metrics["init_checkpoint"] is None
    assert "Continuing the training of" in (new / "train.log").read_text()
    assert tree(source) == before  # the checkpoint's run is only read


@pytest.mark.slow
def test_init_weights_starts_a_new_run_at_epoch_0_from_the_weights(source, image_folder, tmp_path):
    before = tree(source)
    best = source / "checkpoints" / "best.ckpt"
    steps_per_epoch = saved(source / "checkpoints" / "last.ckpt")["global_step"] // 2
    new = tmp_path / "tuned"
    result = run_cli(*same_data(image_folder, tmp_path), f"init_weights={best}",
                     "optimizer.lr=1e-4", "trainer.max_epochs=1", "logger=csv",
                     f"hydra.run.dir={new}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    assert epochs_logged(new) == [0]
    tuned = saved(new / "checkpoints" / "last.ckpt")
    assert tuned["global_step"] == optimizer_steps(tuned) == steps_per_epoch  # a fresh optimizer
    assert tuned["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4
    assert "Starting from the weights of" in (new / "train.log").read_text()
    metrics = json.loads((new / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["init_checkpoint"] == str(best)
    assert metrics["continued_checkpoint"] is None
    assert tree(source) == before


def loose_copy(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "elsewhere" / "last.ckpt"
    copy.parent.mkdir()
    shutil.copy(source / "checkpoints" / "last.ckpt", copy)
    return copy


# (overrides after ckpt_path=, what the refusal says, whether it points to init_weights=)
REFUSALS = {
    "the checkpoint's epochs reach max_epochs": (
        [],
        "has done 2 epochs (step 4), so trainer.max_epochs=2 leaves it no step",
        True,
    ),
    "its steps reach max_steps": (
        ["trainer.max_epochs=5", "++trainer.max_steps=4"],
        "trainer.max_steps=4 leaves it no step",
        True,
    ),
    "a fine-tune's lr": (
        ["trainer.max_epochs=3", "optimizer.lr=1e-4"],
        "(optimizer.lr: 0.0001 here, 0.001 in its run)",
        True,
    ),
    "another optimizer": (
        ["trainer.max_epochs=3", "optimizer=sgd"],
        "optimizer._target_: 'torch.optim.SGD' here",
        True,
    ),
    "a new schedule": (["trainer.max_epochs=3", "scheduler=cosine"], "scheduler: {", True),
    "other data": (
        ["trainer.max_epochs=3", "data.split_seed=3"],
        "data.split_seed is 3, the run's was 0",
        True,
    ),
    "another network": (
        ["trainer.max_epochs=3", "widths=wide"],
        "other settings than this run's (widths",
        False,
    ),
    "another task": (
        ["trainer.max_epochs=3", "task=colorization"],
        "trained for reconstruction",
        False,
    ),
    "a checkpoint outside its run dir": (["trainer.max_epochs=3"], "is not inside a run dir", True),
    "both ways to start": (["trainer.max_epochs=3", "init_weights=CKPT"], "Give one", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSALS)
def test_a_ckpt_path_that_cannot_continue_is_refused_before_a_run_dir(
    case, source, image_folder, tmp_path, capsys
):
    overrides, message, hint = REFUSALS[case]
    checkpoint = loose_copy(source, tmp_path) if "outside" in case else (
        source / "checkpoints" / "last.ckpt"
    )  # fmt: skip
    before = tree(source)
    new = tmp_path / "new"
    overrides = [o.replace("CKPT", str(checkpoint)) for o in overrides]
    code = run_entry(cli.main, *same_data(image_folder, tmp_path), f"ckpt_path={checkpoint}",
                     *overrides, f"hydra.run.dir={new}")  # fmt: skip
    stderr = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert (f"use init_weights={checkpoint}." in stderr) == hint  # the one-line hint, where it fits
    assert not new.exists()
    assert tree(source) == before


def test_a_continuation_keeps_its_own_best_checkpoint(tmp_path):
    """ModelCheckpoint's state from another run dir names a best.ckpt this run does not have: the
    new run starts its own; a resume (a checkpoint in the run's own dir) keeps the run's."""
    callback = ModelCheckpoint(dirpath=tmp_path / "new" / "checkpoints", monitor="val/loss")
    old_state = {
        "dirpath": str(tmp_path / "old" / "checkpoints"),
        "best_model_path": "best.ckpt",
        "best_model_score": torch.tensor(0.5),
        "last_model_path": "last.ckpt",
    }
    for ckpt_path, kept in ((tmp_path / "old" / "checkpoints" / "last.ckpt", False),
                            (tmp_path / "new" / "checkpoints" / "last.ckpt", True)):  # fmt: skip
        checkpoint = {"callbacks": {callback.state_key: dict(old_state)}}
        trainer = SimpleNamespace(checkpoint_callbacks=[callback], ckpt_path=str(ckpt_path))
        CheckpointPathsInRunDir().on_load_checkpoint(trainer, None, checkpoint)
        callback.load_state_dict(checkpoint["callbacks"][callback.state_key])
        assert (callback.best_model_score is not None) == kept
        expected = str(tmp_path / "new" / "checkpoints" / "best.ckpt") if kept else ""
        assert callback.best_model_path == expected


def saved_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run dir holding only the config `python train.py OVERRIDES` saves."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(overrides, run_dir), run_dir / ".hydra" / "config.yaml")
    return run_dir / "checkpoints" / "last.ckpt"


def test_a_one_cycle_continuation_keeps_its_runs_length(tmp_path):
    """OneCycleLR's total steps are the run's own; its restored state keeps the checkpoint run's,
    so a longer continuation would be stopped by the scheduler mid-training: refused up front."""
    onecycle = ["scheduler=onecycle"]
    path = saved_run(tmp_path / "run", onecycle)
    refuse_other_settings(path, path.parents[1], compose_config(onecycle, tmp_path))  # as it was
    longer = compose_config([*onecycle, "trainer.max_epochs=30"], tmp_path)
    with pytest.raises(AelabError, match=r"trainer.max_epochs: 30 here, 15 in its run, the length"):
        refuse_other_settings(path, path.parents[1], longer)
    fixed = [*onecycle, "scheduler.scheduler.total_steps=1000"]  # a length of its own
    path = saved_run(tmp_path / "fixed", fixed)
    refuse_other_settings(
        path, path.parents[1], compose_config([*fixed, "trainer.max_epochs=30"], tmp_path)
    )


@pytest.mark.slow
def test_ckpt_path_never_writes_into_the_checkpoints_run(source, image_folder, tmp_path, capsys):
    """The new run's dir is its own: the checkpoint's run dir is refused as one (run_dir_guard)."""
    before = tree(source)
    code = run_entry(cli.main, *same_data(image_folder, tmp_path),
                     f"ckpt_path={source / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3",
                     f"hydra.run.dir={source}")  # fmt: skip
    assert code == 2 and "already holds a run's files" in capsys.readouterr().err
    assert tree(source) == before


def test_a_mid_epoch_continuation_keeps_the_runs_epoch_order(tmp_path):
    """Saved inside an epoch, a checkpoint's place is a count of batches of the run's order: a
    continuation with another batch size or seed would skip other images than it trained on."""
    path = saved_run(tmp_path / "run", [])
    for changed, message in (("data.batch_size=32", "data.batch_size: 32 here, 128 in its run"),
                             ("seed=1", "data.shuffle_seed: 1 here, 42 in its run")):  # fmt: skip
        cfg = compose_config([changed], tmp_path)
        refuse_other_settings(path, path.parents[1], cfg)  # between epochs: a new order is fine
        with pytest.raises(AelabError, match=f"{message}, which its place in the epoch"):
            refuse_other_settings(path, path.parents[1], cfg, mid_epoch=True)
