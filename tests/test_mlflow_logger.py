"""logger=mlflow: a run's params, per-epoch and test metrics and its files in an MLflow store, read
back with MlflowClient; a killed run resumed goes on in its one MLflow run; a sweep's runs share
one experiment; without MLflow installed, logger=mlflow is refused before anything runs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient  # the dev install includes MLflow: never skipped

from aelab import CONFIG_DIR
from aelab.config import check_config
from aelab.errors import AelabError
from aelab.history import read_history
from aelab.mlflow_run import absolute, experiment_name, open_run
from tests.conftest import (
    CLEAN_ENVIRONMENT,
    REPO,
    compose_config,
    make_image_folder,
    run_cli,
    without_test_hooks,
)

EPOCHS = [0, 1]


@pytest.fixture(scope="module")
def run_args(tmp_path_factory) -> list[str]:
    """Smoke runs of 5 batches per epoch with a step checkpoint every 3 steps: the last one before
    epoch 1's validation falls in the middle of epoch 1 (step 9 of 10)."""
    root = tmp_path_factory.mktemp("mlflow")
    images = make_image_folder(root / "images")
    return [
        "debug=smoke", "data=folder", f"data.root={images}", "data.subset=null",
        f"paths.cache_dir={root / 'cache'}", "trainer.accelerator=cpu", "threads=1",
        "data.batch_size=16", "callbacks.step_checkpoint.every_n_train_steps=3",
    ]  # fmt: skip


def client_of(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def only_run(client: MlflowClient, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def values(client: MlflowClient, run_id: str, key: str) -> list[float]:
    history = sorted(client.get_metric_history(run_id, key), key=lambda metric: metric.step)
    return [metric.value for metric in history]


@pytest.fixture(scope="module")
def reference(run_args, tmp_path_factory) -> Path:
    """An uninterrupted run logging to TensorBoard and MLflow at once, into its own store."""
    root = tmp_path_factory.mktemp("reference")
    result = run_cli(
        *run_args, "logger=[tensorboard,mlflow]", f"paths.tracking_dir={root / 'store'}",
        f"hydra.run.dir={root / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlflow.store" not in result.stderr and "Creating it" not in result.stderr  # quiet
    assert "Creating initial MLflow database tables" in (root / "run" / "train.log").read_text()
    return root


@pytest.mark.slow
def test_a_run_records_its_params_epoch_and_test_metrics_and_files(reference, tmp_path):
    run_dir, client = reference / "run", client_of(reference / "store")
    run = only_run(client, "aelab")  # no experiment= config: the default experiment
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED"
    params = run.data.params  # the resolved config, flattened
    assert params["model/widths"] == "[8, 12, 16]"
    assert params["data/batch_size"] == "16"
    assert params["task/_target_"] == "aelab.tasks.reconstruction.ReconstructionTask"
    assert params["paths/output_dir"] == str(run_dir)
    assert len(params) > 80
    history = read_history(run_dir / "history.jsonl")
    assert [row["epoch"] for row in history] == EPOCHS
    for key in ("val/psnr", "val/loss", "train/loss", "train/lr"):
        assert values(client, run.info.run_id, key) == pytest.approx([r[key] for r in history])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/psnr"] == pytest.approx(metrics["test"]["psnr"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"metrics.json", "preview.png"}
    for name in artifacts:
        copy = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert Path(copy).read_bytes() == (run_dir / name).read_bytes(), name
    assert (reference / "store" / "mlartifacts").is_dir()  # paths.tracking_dir holds both
    assert list((run_dir / "tensorboard").glob("*/events.out.tfevents.*"))  # the other logger


class KillAtSecondValidation(L.Callback):
    """SIGKILLs a fresh run as epoch 1's validation starts, after epoch 0's metrics went to MLflow
    and a step checkpoint in the middle of epoch 1."""

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 1 and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_mlflow_run_with_the_uninterrupted_history(
    run_args, reference, tmp_path
):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    killer = f"+callbacks.killer._target_={__name__}.KillAtSecondValidation"
    result = run_cli(
        *run_args, "logger=mlflow", f"paths.tracking_dir={store}", killer,
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert [row["epoch"] for row in read_history(run_dir / "history.jsonl")] == [0]
    without_test_hooks(run_dir)

    other_cwd = tmp_path / "elsewhere"  # the store is found from any working dir
    result = run_cli(f"resume={run_dir}", cwd=other_cwd)
    assert result.returncode == 0, result.stderr[-3000:]

    client = client_of(store)
    run = only_run(client, "aelab")
    assert (run.info.run_id, run.info.status) == (run_id, "FINISHED")
    assert not (other_cwd / "outputs").exists()
    history = read_history(run_dir / "history.jsonl")
    expected = read_history(reference / "run" / "history.jsonl")
    assert [row["epoch"] for row in history] == EPOCHS  # each epoch once
    for key in ("train/loss", "val/psnr"):
        got = [row[key] for row in history]
        assert got == pytest.approx([row[key] for row in expected], rel=1e-5), key
        assert values(client, run_id, key) == pytest.approx(got), key  # continued, once each
    assert run.data.params["resume"] == "None"  # a param keeps the value it started with
    assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.json", "preview.png"}


@pytest.mark.slow
def test_a_sweeps_runs_share_one_experiment_named_after_its_config(run_args, tmp_path):
    """Two parallel jobs (joblib) into a new store: one creates its tables, then the other."""
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    result = run_cli(
        "-m", "experiment=task1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        *run_args, "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"paths.tracking_dir={store}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_of(store)
    experiment = client.get_experiment_by_name("task1")
    runs = client.search_runs([experiment.experiment_id])
    recorded = {json.loads((sweep / job / "mlflow.json").read_text())["run_id"] for job in "01"}
    assert {run.info.run_id for run in runs} == recorded and len(recorded) == 2
    assert sorted(run.data.params["task/loss"] for run in runs) == ["bce", "mse"]
    assert {e.name for e in client.search_experiments()} == {"task1", "Default"}


@pytest.mark.slow
def test_a_run_dir_names_its_mlflow_run_and_a_new_run_dir_refuses_it(run_args, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mlflow.json").write_text("{}")
    result = run_cli(*run_args, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "mlflow.json" in result.stderr


BLOCK_MLFLOW = "import sys\nsys.modules['mlflow'] = None  # as if MLflow were not installed\n"


@pytest.mark.slow
def test_without_mlflow_logger_mlflow_is_refused_in_one_line_before_the_run(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_MLFLOW)
    path = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    env = {**CLEAN_ENVIRONMENT, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "logger=mlflow", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("aelab:")]
    assert 'pip install -e ".[mlflow]"' in line and "logger.mlflow" in line
    assert not (tmp_path / "run").exists()


def test_a_run_is_one_mlflow_run_so_two_mlflow_loggers_are_refused(tmp_path):
    cfg = compose_config(["logger=mlflow", "+logger.again=${logger.mlflow}"], tmp_path)
    with pytest.raises(AelabError, match=r"logger\.mlflow, logger\.again are all MLflow loggers"):
        check_config(cfg)


def test_a_recorded_mlflow_run_missing_from_its_store_is_refused_naming_the_file(tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = {"tracking_uri": uri, "run_id": "0123456789abcdef0123456789abcdef"}
    (tmp_path / "mlflow.json").write_text(json.dumps(record))
    logger = MLFlowLogger(tracking_uri=uri, run_id=record["run_id"])
    with pytest.raises(AelabError, match=r"mlflow\.json names MLflow run 0123.*remove the file"):
        open_run(logger, tmp_path, {})


def test_the_check_refuses_any_logger_node_that_needs_mlflow(monkeypatch, tmp_path):
    cfg = compose_config(["logger=[tensorboard,mlflow]"], tmp_path)
    check_config(cfg)  # installed: accepted
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(AelabError, match=r"logger\.mlflow: MLflow is not installed.*\[mlflow\]"):
        check_config(cfg)
    check_config(compose_config(["logger=tensorboard"], tmp_path))  # the others need no MLflow


@pytest.mark.parametrize(
    ("given", "expected"),
    [("sqlite:///runs.db", "sqlite:///{cwd}/runs.db"), ("file:./mlruns", "file:{cwd}/mlruns"),
     ("sqlite:////abs/m.db", "sqlite:////abs/m.db"), ("file:///abs", "file:///abs"),
     ("http://host:5000", "http://host:5000"), ("databricks", "databricks")],
)  # fmt: skip
def test_a_relative_store_is_recorded_absolute(given, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert absolute(given) == expected.format(cwd=tmp_path.resolve())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [([], "aelab"), (["experiment=task2_pooling"], "task2_pooling"),
     (["hparams_search=optuna"], "aelab-psnr"),
     (["hparams_search=optuna", "optimized_metric=val/loss"], "aelab-loss")],
)  # fmt: skip
def test_a_run_joins_the_experiment_its_sweep_or_search_is_named_after(overrides, expected):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert experiment_name() == expected
    finally:
        HydraConfig.instance().cfg = None
