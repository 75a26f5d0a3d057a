"""logger=mlflow: each run dir is one MLflow run, continued by its resume, never duplicated.

The logger is Lightning's MLFlowLogger (configs/logger/mlflow.yaml). What aelab adds is here:
which experiment a new run joins (the experiment= config's name, else the Optuna study's, else
"aelab"); RUN/mlflow.json, which names the store and the MLflow run of the run dir, so that a
resumed or requeued run logs on into the same MLflow run from any working dir; and, at the end,
the resolved config as params and metrics.json and preview.png as artifacts. Importing this module
loads neither MLflow nor Lightning: the config check asks it whether MLflow is installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aelab.errors import AelabError

RECORD = "mlflow.json"
INSTALL = 'pip install -e ".[mlflow]"'
DEFAULT_EXPERIMENT = "aelab"  # single runs and sweeps without an experiment= config


def names_mlflow(node: Any) -> bool:
    """Whether a logger node builds an MLflow logger (Lightning's, or a class named like it)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return isinstance(target, str) and target.rpartition(".")[2] == "MLFlowLogger"


def missing_mlflow_problem(logger_nodes: Any) -> str | None:
    """The config check's sentence when a logger needs MLflow and it is not installed."""
    if not isinstance(logger_nodes, DictConfig):
        return None
    names = [name for name, node in logger_nodes.items() if names_mlflow(node)]
    if not names or importlib.util.find_spec("mlflow") is not None:
        return None
    return (
        f"logger.{names[0]}: MLflow is not installed; install it with {INSTALL} "
        "(or choose another logger, e.g. logger=tensorboard)"
    )


def logger_arguments(node: DictConfig, run_dir: Path) -> dict[str, Any]:
    """What aelab passes an MLflow logger besides its config: a run dir that has an MLflow run
    continues it, in the store it was started in (a tracking URI relative to a working dir may
    point elsewhere now); a new run joins its experiment under its overrides' name."""
    if not names_mlflow(node):
        return {}
    record = read_record(run_dir)
    if record:
        return {"tracking_uri": record["tracking_uri"], "run_id": record["run_id"]}
    from aelab.loggers import run_name

    given = {"tracking_uri": absolute(node.tracking_uri)} if node.get("tracking_uri") else {}
    return {
        **given,
        "experiment_name": node.get("experiment_name") or experiment_name(),
        "run_name": node.get("run_name") or run_name(run_dir),
        "tags": {**(node.get("tags") or {}), "aelab.run_dir": str(Path(run_dir).resolve())},
    }


def absolute(tracking_uri: str) -> str:
    """A local store given by a relative path (sqlite:///runs.db, file:./mlruns) as an absolute
    one, so that RUN/mlflow.json names the same store from any working dir."""
    for prefix in ("sqlite:///", "file:"):
        path = tracking_uri.removeprefix(prefix)
        if path != tracking_uri and not path.startswith(("/", ":memory:")):
            return prefix + str(Path(path).resolve())
    return tracking_uri


def experiment_name() -> str:
    """The experiment= config's name, else the Optuna study's, else "aelab": a sweep's runs share
    one MLflow experiment."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return DEFAULT_EXPERIMENT
    hydra = HydraConfig.get()
    choices = hydra.runtime.choices
    if choices.get("experiment"):
        return str(choices["experiment"])
    if choices.get("hparams_search"):
        return str(hydra.sweeper.get("study_name") or choices["hparams_search"])
    return DEFAULT_EXPERIMENT


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AelabError(f"{path} cannot be read ({error}); {_RECORD_ADVICE}") from None
    if not isinstance(record, dict) or not all(
        isinstance(record.get(key), str) for key in ("tracking_uri", "run_id")
    ):
        raise AelabError(f"{path} does not name an MLflow store and run; {_RECORD_ADVICE}")
    return record


_RECORD_ADVICE = (
    "it names the MLflow run this run dir logs to. Remove it to log the rest of the run as a new "
    "MLflow run."
)


def open_runs(loggers: list, run_dir: Path, params: dict) -> None:
    """Start or reopen each MLflow logger's run now, before training, record it in
    RUN/mlflow.json (a run killed at any point is continued in the same MLflow run), and give it
    the resolved config as params: those it lacks, as MLflow keeps a param's first value (a resumed
    run's config differs in `resume`)."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.exceptions import MlflowException

    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        record = read_record(run_dir)
        try:
            run_id = logger.run_id  # creates the run, or finds the recorded one
        except MlflowException as error:
            if record is None:
                raise AelabError(
                    f"The MLflow store of logger.mlflow.tracking_uri cannot start this run's "
                    f"MLflow run ({error.message}). Check the URI, or choose another logger."
                ) from None
            raise AelabError(
                f"{run_dir / RECORD} names MLflow run {record['run_id']} in "
                f"{record['tracking_uri']}, which cannot be opened there ({error.message}). "
                "Restore that store, or remove the file to log the rest of the run as a new "
                "MLflow run."
            ) from None
        client = logger.experiment
        if record is None:
            record = {"tracking_uri": client.tracking_uri, "run_id": run_id}
            record["experiment_id"] = logger.experiment_id
            (run_dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        else:
            client.update_run(run_id, status="RUNNING")  # resumed: running again
        logged = client.get_run(run_id).data.params
        new = {key: value for key, value in flattened(params).items() if key not in logged}
        if new:
            logger.log_hyperparams(new)


def log_files(logger, files: dict[str, str | Path]) -> None:
    """The run's files as artifacts of its MLflow run: a path, or the text a file is about to be
    written with."""
    client, run_id = logger.experiment, logger.run_id
    for name, content in files.items():
        if isinstance(content, Path):
            if content.is_file():
                client.log_artifact(run_id, str(content))
        else:
            client.log_text(run_id, content, name)


def flattened(params: dict, prefix: str = "") -> dict[str, str]:
    """{"model/widths": "[8, 12, 16]", ...}: a nested config as MLflow's flat params."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
