"""Sweeps: the study's experiments, joblib jobs sharing the cores, an Optuna search that resumes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from aelab import CONFIG_DIR
from aelab.analysis.runs import read_curves
from aelab.errors import AelabError
from aelab.runtime.lifecycle import available_cores, threads_per_job

REPO = Path(__file__).resolve().parents[1]

# experiment → (what it sweeps, how many runs)
EXPERIMENTS = {
    "task1": ({"loss": "bce,mse"}, 2),
    "task2_pooling": ({"loss": "bce,mse", "pooling": "max,avg,none"}, 6),
    "task2_kernels": ({"model.kernel_size": "3,5,7"}, 3),
    "task2_widths": ({"widths": "assignment,wide,deep"}, 3),
    "task3": ({"pooling": "max,none"}, 2),
    "rate_distortion": ({"model": "seed,resnet", "model.latent_channels": "1,3,8,16"}, 8),
    "resnet192": ({}, 1),  # one run: the preset's target against PCA-192
    "unet_color": ({}, 1),  # one run: the unet preset's colours against grey
}
COLORIZATION_EXPERIMENTS = ("task3", "unet_color")


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """python train.py ARGS from cwd (so nothing lands in the repo's outputs/)."""
    command = [sys.executable, str(REPO / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_every_experiment_is_listed_here():
    assert sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml")) == sorted(
        EXPERIMENTS
    )


@pytest.mark.parametrize(("experiment", "expected"), EXPERIMENTS.items())
def test_each_experiment_sweeps_its_study(experiment, expected):
    params, runs = expected
    cfg = compose_with_hydra([f"experiment={experiment}"])
    swept = {key: str(value) for key, value in (cfg.hydra.sweeper.params or {}).items()}
    assert swept == params
    assert math.prod(len(value.split(",")) for value in swept.values()) == runs
    where = cfg.hydra.sweep.dir if runs > 1 else cfg.hydra.run.dir
    assert where.startswith(f"outputs/experiments/{experiment}/")
    assert cfg.task._target_.endswith(
        "ColorizationTask" if experiment in COLORIZATION_EXPERIMENTS else "ReconstructionTask"
    )


def test_an_experiment_keeps_the_debug_settings_and_command_line_on_top():
    cfg = compose_with_hydra(["experiment=task2_kernels", "debug=smoke", "loss=mse"])
    assert (cfg.trainer.max_epochs, cfg.data.subset, cfg.task.loss) == (2, 600, "mse")
    assert cfg.model.pooling == "max" and list(cfg.model.widths) == [8, 12, 16]


@pytest.mark.parametrize(
    ("requested", "jobs", "cores", "expected"),
    [
        (None, 1, 16, 16),  # a single run or a sequential sweep: every core
        (None, 2, 16, 8),
        (None, 3, 16, 5),
        (None, 4, 2, 1),  # more jobs than cores: one thread each, never zero
        (None, -1, 16, 1),  # joblib's -1: one job per core
        (None, -2, 16, 1),  # all cores but one: 15 jobs
        (None, -15, 16, 8),  # 16 + 1 - 15 = 2 jobs
        (3, 4, 16, 3),  # threads=3 wins
    ],
)
def test_threads_per_job_never_oversubscribe_the_cores(requested, jobs, cores, expected):
    assert threads_per_job(requested, jobs, cores) == expected


@pytest.mark.parametrize("requested", [0, -2, 1.5])
def test_threads_must_be_a_positive_integer(requested):
    with pytest.raises(AelabError, match="threads must be a positive integer"):
        threads_per_job(requested, 1, 4)


@pytest.mark.slow
def test_a_joblib_sweep_runs_an_experiment_with_the_cores_shared(smoke_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m", "experiment=task1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        *smoke_overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in sweep.iterdir() if path.is_dir()) == ["0", "1"]
    for job, loss in (("0", "bce"), ("1", "mse")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert (metrics["status"], metrics["loss"]) == ("completed", loss)
        timing = json.loads((sweep / job / "timing.json").read_text())
        assert timing["torch_threads"] == max(1, available_cores() // 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Deprecated API features")  # optuna 2 on SQLAlchemy 1.4
def test_optuna_search_maximises_val_psnr_and_resumes(smoke_overrides, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for attempt in (1, 2):
        result = run_train(
            "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}", *smoke_overrides,
            f"hydra.sweep.dir={tmp_path / f'search{attempt}'}", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="aelab-psnr", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3]
    run_dirs = [tmp_path / f"search{attempt}" / job for attempt in (1, 2) for job in ("0", "1")]
    for trial, run_dir in zip(study.trials, run_dirs, strict=True):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert 1e-4 <= trial.params["optimizer.lr"] <= 1e-2
        assert trial.params["model.kernel_size"] in (3, 5, 7)
        assert trial.params["widths"] in ("assignment", "wide", "deep")
        last_val_psnr = read_curves(run_dir)["val/psnr"][-1][1]
        assert trial.value == pytest.approx(last_val_psnr, rel=1e-6)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["model"]["kernel_size"] == trial.params["model.kernel_size"]
