"""logger=mlflow: each run dir is one MLflow run, continued by its resume, never duplicated.

The logger is Lightning's MLFlowLogger (configs/logger/mlflow.yaml). What aelab adds is here:
which experiment a new run joins (the experiment= config's name, else the Optuna study's, else
"aelab"); RUN/mlflow.json, which names the store and the MLflow run of the run dir, so that a
resumed or requeued run logs on into the same MLflow run from any working dir; and, at the end,
the resolved config as params and metrics.json and preview.png as artifacts. Importing this module
loads neither MLflow nor Lightning: the config check asks it whether MLflow is installed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
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


def mlflow_logger_problem(logger_nodes: Any) -> str | None:
    """The config check's sentence when a logger needs MLflow and it is not installed, or when
    more than one logger would log the run dir's one MLflow run."""
    if not isinstance(logger_nodes, DictConfig):
        return None
    names = [name for name, node in logger_nodes.items() if names_mlflow(node)]
    if len(names) > 1:
        return (
            f"logger: {', '.join(f'logger.{name}' for name in names)} are all MLflow loggers; a "
            "run is one MLflow run, logged by one of them"
        )
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


def build_logger(node: DictConfig, run_dir: Path):
    """A configured logger, as Hydra builds it; an MLflow one with logger_arguments, and one process
    at a time per SQLite store (MLflow creates its tables on the first connection)."""
    from hydra.utils import instantiate

    if not names_mlflow(node):
        return instantiate(node)
    import mlflow  # noqa: F401  (gives its logger a console handler, which would bypass train.log)

    from aelab.runtime.console import logs_through_root

    logs_through_root(("mlflow",))
    with store_lock(store_uri(node, run_dir)):
        return instantiate(node, **logger_arguments(node, run_dir))


def store_uri(node: DictConfig, run_dir: Path) -> str:
    """The store a logger node logs the run dir's MLflow run to: the recorded one, else its own."""
    record = read_record(run_dir)
    return record["tracking_uri"] if record else absolute(node.get("tracking_uri") or "")


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Held while a process creates a SQLite store's tables or opens its run there: the parallel
    jobs of a sweep (hydra/launcher=joblib) would find the database locked, or both create the
    experiment. An flock on the database file, apart from SQLite's own (fcntl) locks."""
    path = tracking_uri.removeprefix("sqlite:///")
    if path == tracking_uri or path.startswith(":memory:"):
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as database:
        fcntl.flock(database, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(database, fcntl.LOCK_UN)


def open_runs(nodes: list[DictConfig], loggers: list, run_dir: Path, params: dict) -> None:
    """Start or reopen each MLflow logger's run now, before training (nodes: the loggers' config
    nodes, in their order)."""
    for node, logger in zip(nodes, loggers, strict=True):
        if names_mlflow(node):
            with store_lock(store_uri(node, run_dir)):
                open_run(logger, run_dir, params)


def open_run(logger, run_dir: Path, params: dict) -> None:
    """Start or reopen the logger's MLflow run, record it in RUN/mlflow.json (a run killed at any
    point is continued in the same MLflow run), and give it the resolved config as params: those
    it lacks, as MLflow keeps a param's first value (a resumed run's config differs in `resume`)."""
    from mlflow.exceptions import MlflowException

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
