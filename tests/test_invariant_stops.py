"""Every stop is an interruption: a signal in any phase of a run (setup, fit, validation, test,
writing results) leaves it "interrupted" with exit 128 + n and a printed resume command that
ends it "completed", with the test scores and the curves of every logger of the uninterrupted
run. A moved run dir still finishes; checkpoints elsewhere are refused; an edited config is
refused without touching the status; a stopped sweep keeps its unrun jobs and one command
finishes it. The signals are sent by tests/stop_phases.py, a test-only hook in each phase."""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from aelab.runtime.sweeps import sweep_jobs
from tests.conftest import CLEAN_ENVIRONMENT, make_image_folder, without_test_hooks

REPO = Path(__file__).resolve().parents[1]
HOOK = "+callbacks.stop._target_=tests.stop_phases.SignalInPhase"
RESUME = re.compile(r"Continue (?:the sweep \(.*?\) )?with: python train\.py (resume=\S+)")
CURVES = ("train/loss", "val/loss", "val/psnr")


@pytest.fixture(scope="module")
def run_args(tmp_path_factory) -> list[str]:
    """Two epochs of 5 steps, a step checkpoint every 3 steps, both loggers, one thread."""
    root = tmp_path_factory.mktemp("stops")
    images = make_image_folder(root / "images")
    return [
        "debug=smoke", "data=folder", f"data.root={images}", "data.subset=null",
        f"paths.cache_dir={root / 'cache'}", "trainer.accelerator=cpu", "threads=1",
        "data.batch_size=16", "trainer.max_epochs=2", "logger=[tensorboard,csv]",
        "callbacks.step_checkpoint.every_n_train_steps=3", "callbacks.progress_bar=null",
    ]  # fmt: skip


def train(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=CLEAN_ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(*run_args, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def curves(run_dir: Path) -> dict:
    """Per logger, each curve's (step, value) points in the order they were logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_dir,) = (run_dir / "tensorboard").iterdir()  # the run's name (aelab.loggers)
    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    tensorboard = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in CURVES}
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    table = {t: [(int(r["step"]), float(r[t])) for r in rows if r.get(t)] for t in CURVES}
    return {"tensorboard": tensorboard, "csv": table}


def assert_resume_completes(result, run_dir: Path, reference: Path, signum: int) -> None:
    """The stop's exit, status and hint; the hinted command finishes the reference run."""
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "interrupted", status
    assert status["error"].startswith(signal.Signals(signum).name)
    (hinted,) = RESUME.findall(result.stderr)
    assert status["resume"] == f"python train.py {hinted}"
    without_test_hooks(run_dir)

    resumed = train(hinted)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert ours["status"] == "completed" and ours["test"] == theirs["test"]
    assert curves(run_dir) == curves(reference)


PHASES = [
    ("build", "SIGTERM"),  # setup, before the Trainer exists: no checkpoint yet
    ("setup", "SIGINT"),  # Lightning's setup of fit
    ("fit", "SIGTERM"),
    ("fit", "SIGINT"),  # Ctrl+C
    ("validation", "SIGTERM"),
    ("last_validation", "SIGTERM"),  # after the last step: saved when training ends
    ("test", "SIGTERM"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "name"), PHASES, ids=[f"{p}-{n}" for p, n in PHASES])
def test_a_signal_in_any_phase_interrupts_and_the_printed_resume_finishes_the_run(
    phase, name, run_args, reference, tmp_path
):
    run_dir = tmp_path / "run"
    hook = [HOOK, f"+callbacks.stop.phase={phase}", f"+callbacks.stop.signal={name}"]
    result = train(*run_args, *hook, f"hydra.run.dir={run_dir}")
    assert_resume_completes(result, run_dir, reference, signal.Signals[name])


@pytest.mark.slow
def test_a_signal_while_the_results_are_written_interrupts_and_resume_writes_them(
    run_args, reference, tmp_path
):
    run_dir = tmp_path / "run"
    hook = ["+logger.stop._target_=tests.stop_phases.SignalWhileWritingResults"]
    result = train(*run_args, *hook, f"+logger.stop.save_dir={run_dir}", f"hydra.run.dir={run_dir}")
    assert_resume_completes(result, run_dir, reference, signal.SIGTERM)


@pytest.mark.slow
def test_a_run_dir_moved_after_a_stop_finishes_with_its_best_checkpoint(
    run_args, reference, tmp_path
):
    """Stopped in epoch 1, when epoch 0's best.ckpt exists; moved; resumed from its new place."""
    moved = tmp_path / "moved"
    result = train(
        *run_args, HOOK, "+callbacks.stop.phase=fit", "+callbacks.stop.at_step=7",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    shutil.move(tmp_path / "run", moved)
    without_test_hooks(moved)

    resumed = train(f"resume={moved}")

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dirpath has changed" not in resumed.stderr
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (moved, reference))
    assert ours["test"] == theirs["test"] and ours["best_checkpoint"] == "checkpoints/best.ckpt"
    assert curves(moved) == curves(reference)
    states = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
        for d in (moved, reference)
    ]
    best = [{k: v for k, v in s.items() if "val/loss" in k} for s in states]
    assert best[0] == best[1]  # the same best score, and paths relative to the checkpoints dir
    (state,) = best[0].values()
    assert (state["dirpath"], state["best_model_path"]) == (".", "best.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["callbacks.checkpoint.dirpath", "logger.tensorboard.save_dir"])
def test_checkpoints_or_logs_outside_the_run_dir_are_refused_before_the_run(
    key, run_args, tmp_path
):
    elsewhere = tmp_path / "elsewhere"
    result = train(*run_args, f"{key}={elsewhere}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert f"{key}={elsewhere} is outside the run dir" in said and "hydra.run.dir=" in said
    assert not elsewhere.exists()


@pytest.mark.slow
def test_resuming_a_run_whose_saved_widths_were_edited_is_refused_and_keeps_its_status(
    run_args, tmp_path
):
    run_dir = tmp_path / "run"
    result = train(*run_args, HOOK, "+callbacks.stop.phase=fit", f"hydra.run.dir={run_dir}")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    without_test_hooks(run_dir)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.model.widths = [8, 12, 32]
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    status = (run_dir / "metrics.json").read_bytes()

    resumed = train(f"resume={run_dir}")

    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    said = " ".join(resumed.stderr.split())
    assert "other settings than this run's (widths: [8, 12, 16] vs [8, 12, 32])" in said
    assert "put back the values it was trained with" in said
    assert (run_dir / "metrics.json").read_bytes() == status


@pytest.mark.slow
def test_a_stopped_sweep_lists_its_unrun_job_and_resume_finishes_it(run_args, reference, tmp_path):
    """SIGTERM to a local sweep during job 0: exit 143, the sweep's command offered, job 1 listed
    as not run; `resume=SWEEP_DIR` resumes job 0 and runs job 1, each as a run of its own."""
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "-m", *run_args, "seed=42,7",
         f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=CLEAN_ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    while not (sweep / "0" / "checkpoints" / "last.ckpt").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    stderr = process.stderr.read()
    assert f"Continue the sweep (this job, then those not run yet) with: python train.py resume={sweep}" in " ".join(stderr.split())  # fmt: skip
    assert [(j.number, j.overrides[-1], j.status) for j in sweep_jobs(sweep)] == [
        (0, "seed=42", "interrupted"),
        (1, "seed=7", "not run"),
    ]
    again = train("-m", *run_args, "seed=42,7", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 2 and "resume=" in again.stderr

    finished = train(f"resume={sweep}")

    assert finished.returncode == 0, finished.stderr[-3000:]
    jobs = sweep_jobs(sweep)
    assert [(j.number, j.run_dir, j.status) for j in jobs] == [
        (0, sweep / "0", "completed"),
        (1, sweep / "1", "completed"),
    ]
    first = json.loads((sweep / "0" / "metrics.json").read_text())
    assert first["test"] == json.loads((reference / "metrics.json").read_text())["test"]
    second = OmegaConf.load(sweep / "1" / ".hydra" / "config.yaml")
    assert second.seed == 7 and second.trainer.max_epochs == 2
    assert train(f"resume={sweep}").returncode == 0  # nothing left: nothing done


def test_checkpoint_paths_are_saved_relative_and_read_back_into_the_loading_runs_dir(tmp_path):
    """Also from a checkpoint that names them absolute, in the dir the run was moved from."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from aelab.callbacks import CheckpointPathsInRunDir

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    saving, loading = (
        ModelCheckpoint(dirpath=old, monitor="val/loss"),
        ModelCheckpoint(dirpath=new, monitor="val/loss"),
    )
    saving.best_model_path, saving.best_model_score = str(old / "best.ckpt"), torch.tensor(0.5)
    saving.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.5)}
    key, paths = saving.state_key, CheckpointPathsInRunDir()
    absolute = {"callbacks": {key: saving.state_dict()}}
    saved = {"callbacks": {key: dict(saving.state_dict())}}
    paths.on_save_checkpoint(SimpleNamespace(checkpoint_callbacks=[saving]), None, saved)
    assert saved["callbacks"][key]["dirpath"] == "."
    assert saved["callbacks"][key]["best_model_path"] == "best.ckpt"
    assert saving.best_model_path == str(old / "best.ckpt")  # the live state is the callback's
    for checkpoint in (absolute, saved):
        resuming = SimpleNamespace(checkpoint_callbacks=[loading], ckpt_path=str(new / "last.ckpt"))
        paths.on_load_checkpoint(resuming, None, checkpoint)
        loading.load_state_dict(checkpoint["callbacks"][key])
        assert loading.best_model_path == str(new / "best.ckpt")
        assert loading.best_model_score == 0.5
        assert list(loading.best_k_models) == [str(new / "best.ckpt")]


def test_a_sweeps_job_list_is_the_one_hydras_basic_sweeper_runs():
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the oracle
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from aelab import CONFIG_DIR
    from aelab.runtime.sweeps import listed_jobs

    overrides = ["experiment=task2_pooling", "seed=1,2", "loss=mse"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=["experiment=task2_pooling"], return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = overrides  # as a -m command line sets it
    params = [f"{k}={v}" for k, v in config.hydra.sweeper.params.items()]
    (expected,) = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides([*params, *overrides]), None
    )
    jobs = listed_jobs(config)
    assert jobs == expected and len(jobs) == 6  # loss=mse on the command line replaces bce,mse
    assert jobs[:2] == [
        ["loss=mse", "pooling=max", "experiment=task2_pooling", "seed=1"],
        ["loss=mse", "pooling=max", "experiment=task2_pooling", "seed=2"],
    ]


def test_a_sweeps_jobs_are_found_by_their_overrides_and_unstarted_ones_are_not_run(tmp_path):
    """For the report: any hydra.sweep.subdir, and sweeps further down the dir given."""
    from aelab.runtime.sweeps import jobs_not_run

    sweep = tmp_path / "study" / "sweep"
    jobs = [["loss=bce"], ["loss=mse"], ["loss=ce"]]
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(
        json.dumps({"jobs": [{"job": n, "overrides": o} for n, o in enumerate(jobs)]})
    )
    for name, overrides, status in (("0", jobs[0], "completed"), ("mse", jobs[1], None)):
        (sweep / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), sweep / name / ".hydra" / "overrides.yaml")
        if status:
            (sweep / name / "metrics.json").write_text(json.dumps({"status": status}))
    assert [(j.number, j.run_dir, j.status) for j in sweep_jobs(sweep)] == [
        (0, sweep / "0", "completed"),
        (1, sweep / "mse", None),
        (2, None, "not run"),
    ]
    ((where, job),) = jobs_not_run(tmp_path)
    assert where == sweep and job.overrides == ("loss=ce",)
