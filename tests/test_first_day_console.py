"""What a user sees: each line once on screen and once in train.log, no warning they cannot act
on, TensorBoard runs named by their overrides, and a progress bar that knows its epoch."""

from __future__ import annotations

import re
import signal
import warnings
from collections import Counter
from pathlib import Path

import lightning as L
import pytest

from aelab.callbacks import EpochProgressBar
from aelab.loggers import DEFAULT_NAME, MAX_NAME_BYTES, run_name
from aelab.runtime.console import UNACTIONABLE_WARNINGS, quiet_library_noise
from aelab.runtime.train import build
from tests.conftest import compose_config, run_cli, without_test_hooks

# What the libraries printed in every run, none of which the user could act on.
NOISE = ("litlogger", "💡", "LeafSpec", "_pytree", "weights_only", "exists and is not empty")
NOISE += ("ended before the epoch ended", "Trainer(val_check_interval=1.0)")
HYDRA_PREFIX = re.compile(r"^\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - ")  # Hydra's console and file format
LIGHTNING_PREFIX = re.compile(r"^(INFO|WARNING): ")  # Lightning's own console handler's format
SMOKE_NAME = "data.subset=null,data=folder,debug=smoke"  # less data.root, paths, the accelerator


def messages(text: str) -> list[str]:
    """The log lines of a stream, without the handlers' prefixes."""
    lines = (LIGHTNING_PREFIX.sub("", HYDRA_PREFIX.sub("", line)) for line in text.splitlines())
    return [line for line in lines if line.strip()]


def assert_quiet(result, run_dir: Path) -> None:
    """No line twice on screen, none of the noise, and Lightning's lines in train.log too."""
    screen = messages(result.stdout) + messages(result.stderr)
    twice = [line for line, count in Counter(screen).items() if count > 1]
    assert not twice, twice
    assert not [line for line in screen if any(noise in line for noise in NOISE)]
    log = messages((run_dir / "train.log").read_text())
    assert Counter(log)["Seed set to 42"] == Counter(screen)["Seed set to 42"] == 1


@pytest.mark.slow
def test_a_smoke_run_prints_each_line_once_and_no_noise(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*smoke_overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_quiet(result, run_dir)
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == [SMOKE_NAME]


@pytest.mark.slow
def test_a_stopped_and_resumed_run_is_quiet_and_one_tensorboard_run(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    stop = ["+callbacks.stop._target_=tests.stop_phases.SignalInPhase", "+callbacks.stop.phase=fit"]
    stopped = run_cli(*smoke_overrides, *stop, "data.batch_size=8", f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert_quiet(stopped, run_dir)
    (named,) = (run_dir / "tensorboard").iterdir()
    before = set(named.glob("events.out.tfevents.*"))
    assert named.name.endswith(f"data.batch_size=8,{SMOKE_NAME}") and before

    without_test_hooks(run_dir)
    resumed = run_cli(f"resume={run_dir}")

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    screen = messages(resumed.stdout) + messages(resumed.stderr)
    assert not [line for line, count in Counter(screen).items() if count > 1]
    assert not [line for line in screen if any(noise in line for noise in NOISE)]
    assert "Restored all states from the checkpoint" in (run_dir / "train.log").read_text()
    assert list((run_dir / "tensorboard").iterdir()) == [named]  # no second TensorBoard run
    assert set(named.glob("events.out.tfevents.*")) > before


@pytest.mark.slow
def test_each_job_of_a_sweep_is_named_by_its_own_overrides(smoke_overrides, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", *smoke_overrides, "loss=bce,mse", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    names = {p.name for p in sweep_dir.glob("*/tensorboard/*")}
    assert names == {f"{SMOKE_NAME},loss=bce", f"{SMOKE_NAME},loss=mse"}
    screen = messages(result.stdout) + messages(result.stderr)  # the second job's too
    assert Counter(screen)["Seed set to 42"] == 2  # once per job
    assert not [line for line in screen if any(noise in line for noise in NOISE)]


@pytest.mark.parametrize(("category", "message", "module"), UNACTIONABLE_WARNINGS)
def test_a_warning_is_left_out_only_where_it_comes_from(category, message, module):
    text = re.sub(r"\\(.)", r"\1", message.replace(".*", " /x "))  # a message the pattern matches
    emitted = module.replace("\\", "")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_library_noise()
        for name in (emitted, "aelab.elsewhere"):  # warnings.warn names the caller's module
            exec(
                f"import warnings; warnings.warn({text!r}, {category.__name__})", {"__name__": name}
            )
    assert [str(w.message) for w in shown] == [text]  # the one from elsewhere


def hydra_yaml(run_dir: Path, override_dirname: str) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    text = f"hydra:\n  job:\n    override_dirname: '{override_dirname}'\n"
    (run_dir / ".hydra" / "hydra.yaml").write_text(text)
    return run_dir


@pytest.mark.parametrize(
    ("override_dirname", "name"),
    [
        ("", DEFAULT_NAME),  # a run without overrides
        ("loss=mse,pooling=none", "loss=mse,pooling=none"),
        ("+foo=a/b", "+foo=a_b"),  # a '/' would nest the event dir
    ],
)
def test_the_run_name_is_the_overrides_hydra_recorded(override_dirname, name, tmp_path):
    assert run_name(hydra_yaml(tmp_path, override_dirname)) == name


def test_a_long_or_missing_run_name_still_names_a_dir(tmp_path):
    long = run_name(hydra_yaml(tmp_path / "long", ",".join(f"model.k{i}=ü{i}" for i in range(60))))
    assert len(long.encode()) <= MAX_NAME_BYTES and long.startswith("model.k0=ü0,")
    assert run_name(tmp_path / "no_hydra_dir") == DEFAULT_NAME


class SaveAfterBatch(L.Callback):
    """last.ckpt after batch `at`, inside the epoch, as a stop signal has it saved."""

    def __init__(self, path: Path, at: int) -> None:
        self.path, self.at = path, at

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if batch_idx == self.at:
            trainer.save_checkpoint(self.path, weights_only=False)


class FirstBatch(L.Callback):
    """What the training bar shows after the first batch this fit trains."""

    def __init__(self, bar: EpochProgressBar) -> None:
        self.bar, self.seen = bar, None

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if self.seen is None:
            bar = self.bar.train_progress_bar
            self.seen = (bar.desc, bar.n, bar.total, bar.initial)


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_shows_its_epoch_and_total(image_folder, tmp_path):
    cfg = compose_config(
        ["data=folder", f"data.root={image_folder}", "data.batch_size=8", "data.subset=null"],
        tmp_path,
    )
    fit = dict(accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0)
    task, datamodule = build(cfg)
    saver = SaveAfterBatch(tmp_path / "mid.ckpt", at=2)  # after 3 of epoch 0's 10 batches
    L.Trainer(max_epochs=1, callbacks=[saver], **fit).fit(task, datamodule=datamodule)

    task, datamodule = build(cfg)
    bar = EpochProgressBar(refresh_rate=1)
    seen = FirstBatch(bar)
    L.Trainer(max_epochs=1, callbacks=[bar, seen], **fit).fit(
        task, datamodule=datamodule, ckpt_path=tmp_path / "mid.ckpt"
    )
    assert seen.seen == ("Epoch 0", 4, 10, 3)  # the 4th batch of 10, speed counted from it
