"""Runs read back from their directories: status, config, overrides, results and curves.

A run dir is any directory holding `.hydra/config.yaml`. Its state comes from metrics.json, which
aelab.runtime.train writes as {"status": "running", pid, host} once training starts, then replaces with
the results ("completed"), or with {"status": "failed" | "diverged" | "interrupted", error}: a run
is shown with the status it recorded. A run with no metrics.json stopped before training began; a
"running" run whose process is gone was killed. Both are shown as crashed. A run
whose files cannot be read as aelab wrote them (a truncated metrics.json, a list where an object
belongs, a missing key) is "unreadable", with the reason; the other runs are read as usual.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.config.arguments import as_typed
from aelab.errors import AelabError
from aelab.history import FILE_NAME as HISTORY_FILE
from aelab.history import read_history
from aelab.runtime.run_config import is_eval_dir, load_run_config

STATUSES = ("completed", "running", "interrupted", "failed", "diverged", "crashed", "unreadable")
Curve = list[tuple[int, float]]  # (epoch, value), epochs counted from 0


@dataclass
class Run:
    name: str  # the path relative to the directory the runs were found in
    path: Path
    status: str  # one of STATUSES
    detail: str  # why it is not completed, in words; a completed run's caveat
    config: DictConfig | None  # None when .hydra/config.yaml cannot be read as a run's config
    overrides: list[str]
    metrics: dict = field(default_factory=dict)  # metrics.json of a completed run
    timing: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @functools.cached_property
    def curves(self) -> dict[str, Curve]:
        """read_curves, read once: the report's charts share them."""
        return read_curves(self.path)


class Unreadable(Exception):
    """A run's file is not what aelab writes there; the message says how."""


def find_runs(directory: Path) -> list[Run]:
    """Every run under directory (itself, a multirun's jobs, or sweeps further down), in job order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AelabError(
            f"{directory} is not a directory. Give a run dir (outputs/runs/<date>_<time>) or a multirun dir (outputs/multirun/<date>_<time>)."
        )
    paths = sorted(
        (
            config.parent.parent
            for config in directory.rglob(".hydra/config.yaml")
            if not is_eval_dir(config.parent.parent)  # eval.py's dirs are no runs
        ),
        key=lambda path: _natural_key(path.relative_to(directory)),
    )
    if not paths:
        raise AelabError(
            f"{directory} holds no runs: no <run>/.hydra/config.yaml under it. Give a run dir "
            "(outputs/runs/<date>_<time>) or a multirun dir (outputs/multirun/<date>_<time>, "
            "outputs/experiments/<name>/<date>_<time>), as written by python train.py [-m]."
        )
    return [
        read_run(path, str(path.relative_to(directory)) if path != directory else path.name)
        for path in paths
    ]


def _natural_key(relative: Path) -> tuple:
    """Job 10 after job 9: numeric path parts compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in relative.parts)


def read_run(path: Path, name: str) -> Run:
    """The run in path; one it cannot read is returned as unreadable, with the reason."""
    problems = []
    try:
        config = read_config(path / ".hydra" / "config.yaml")
    except Unreadable as problem:
        config = None
        problems.append(str(problem))
    try:
        overrides = read_overrides(path / ".hydra" / "overrides.yaml")
    except Unreadable as problem:
        overrides = []
        problems.append(str(problem))
    try:
        metrics = read_json(path / "metrics.json")
        if metrics is not None:
            check_metrics(metrics)
    except Unreadable as problem:
        metrics = None
        problems.append(str(problem))
    caveat = ""
    try:
        timing = read_json(path / "timing.json")
        timing = {} if timing is None else timing
        check_timing(timing)
    except Unreadable as problem:  # only the speed is lost: the run's results still count
        timing, caveat = {}, str(problem)
    if problems:
        status, detail = "unreadable", "; ".join(problems)
    else:
        status, detail = run_status(metrics, path)
        detail = "; ".join(filter(None, [detail, caveat]))
    return Run(
        name=name,
        path=path,
        status=status,
        detail=detail,
        config=config,
        overrides=overrides,
        metrics=metrics if status == "completed" else {},
        timing=timing,
    )


def read_json(path: Path):
    """The file's JSON; None if there is no file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # ValueError: not JSON (truncated?), not UTF-8
        raise Unreadable(f"{path.name} cannot be read: {error}") from None


def read_config(path: Path) -> DictConfig:
    """The run's .hydra/config.yaml, with the task and data the report groups runs by."""
    try:  # read as eval.py reads it: refused if it names code aelab does not (aelab.config.trusted)
        config = load_run_config(path.parent.parent)
    except AelabError as error:
        raise Unreadable(str(error).replace(str(path), ".hydra/config.yaml")) from None
    task, data = config.get("task"), config.get("data")
    if not isinstance(task, DictConfig) or not isinstance(task.get("_target_"), str):
        raise Unreadable(".hydra/config.yaml has no task._target_")
    if not isinstance(data, DictConfig):
        raise Unreadable(".hydra/config.yaml has no data settings")
    try:
        OmegaConf.to_container(data, resolve=True)
    except OmegaConfBaseException as error:
        raise Unreadable(f".hydra/config.yaml's data settings do not resolve: {error}") from None
    return config


def read_overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise Unreadable(f".hydra/overrides.yaml cannot be read: {error}") from None
    if not isinstance(overrides, list):
        raise Unreadable(f".hydra/overrides.yaml holds {_kind(overrides)}, not a list")
    return [as_typed(str(override)) for override in overrides]


def check_metrics(metrics) -> None:
    """Raise Unreadable unless metrics is shaped as aelab.runtime writes metrics.json."""
    if not isinstance(metrics, dict):
        raise Unreadable(f"metrics.json holds {_kind(metrics)}, not the object aelab writes")
    if "status" not in metrics:
        raise Unreadable('metrics.json has no "status"')
    if metrics["status"] == "running" and not isinstance(metrics.get("pid"), int | None):
        raise Unreadable(f'metrics.json\'s "pid" is {metrics["pid"]!r}, not a process id')
    if metrics["status"] != "completed":
        return
    for key in ("test", "model"):
        if key not in metrics:
            raise Unreadable(f'metrics.json says completed but has no "{key}"')
        if not isinstance(metrics[key], dict):
            raise Unreadable(f'metrics.json\'s "{key}" is {_kind(metrics[key])}, not an object')
    for key, value in metrics["test"].items():
        if not _is_number(value):
            raise Unreadable(f"metrics.json's test score {key} is {value!r}, not a number")
    model = metrics["model"]
    size = model.get("latent_size", "absent")  # null: a custom network's code size, unknown
    if size is not None and not _is_number(size):
        raise Unreadable('metrics.json\'s "model" has no latent_size')
    for key in ("compression", "parameters"):
        if model.get(key) is not None and not _is_number(model[key]):
            raise Unreadable(f"metrics.json's model {key} is {model[key]!r}, not a number")
    data = metrics.get("data", {})
    if not isinstance(data, dict) or not all(_is_number(v) for v in data.values()):
        raise Unreadable(f'metrics.json\'s "data" is {data!r}, not image counts per split')
    for key in ("task", "loss"):
        if metrics.get(key) is not None and not isinstance(metrics[key], str):
            raise Unreadable(f"metrics.json's {key} is {metrics[key]!r}, not a name")


def check_timing(timing) -> None:
    if not isinstance(timing, dict):
        raise Unreadable(f"timing.json holds {_kind(timing)}, not the object aelab writes")
    seconds = timing.get("mean_seconds_per_epoch")
    if seconds is not None and not _is_number(seconds):
        raise Unreadable(f"timing.json's mean_seconds_per_epoch is {seconds!r}, not a number")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value) -> str:
    """A JSON or YAML value's kind, in words."""
    kinds = {dict: "an object", list: "a list", str: "text", bool: "a boolean", type(None): "null"}
    for kind, words in kinds.items():
        if isinstance(value, kind):
            return f"{words} ({value!r})" if kind is str else words
    return "a number" if _is_number(value) else type(value).__name__


def run_status(metrics: dict | None, run_dir: Path) -> tuple[str, str]:
    """(status, detail) from a run's metrics.json (None when it has none): the status the run
    recorded; "crashed" only for a run that recorded none (it stopped before training, or its
    process is gone while metrics.json still says running). A run that can continue in place says
    how: an interrupted one that kept its state, a crashed one with checkpoints/last.ckpt."""
    resume = f"resume with `python train.py resume={run_dir}`"
    if metrics is None:
        return "crashed", "no metrics.json: it stopped before training began"
    status = metrics.get("status")
    if status == "completed":
        return "completed", ""
    if status in ("failed", "diverged"):
        return status, metrics.get("error", "no error recorded")
    if status == "interrupted":
        kept = "resume" in metrics  # written only when the run's state was kept
        return "interrupted", resume if kept else "nothing was kept: run the same command again"
    if status == "running":
        pid, host = metrics.get("pid"), metrics.get("host")
        if host != socket.gethostname():
            return "running", f"running on {host} (pid {pid}); cannot check it from here"
        if pid is not None and process_alive(int(pid)):
            return "running", f"running (pid {pid})"
        gone = f"stopped while training: process {pid} is gone (killed?)"
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            return "crashed", f"{gone}; {resume}"
        return "crashed", gone
    return "crashed", f"metrics.json has an unknown status {status!r}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is someone else's
        return True
    return True


def read_curves(path: Path) -> dict[str, Curve]:
    """Per-epoch values by name ("train/loss", "val/psnr", ...) from the run's history.jsonl
    (aelab.history), which every run writes whatever its loggers."""
    curves: dict[str, Curve] = {}
    for row in read_history(path / HISTORY_FILE):
        for name, value in row.items():
            if name not in ("epoch", "step") and _is_number(value):
                curves.setdefault(name, []).append((row["epoch"], float(value)))
    return curves


def describe_differences(runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """The overrides every run shares, and per run a label made of the ones that differ.

    E.g. a `-m loss=bce,mse pooling=max,none` sweep labels its runs "loss=bce pooling=max", ...
    """
    parsed = [dict(_split_override(override) for override in run.overrides) for run in runs]
    keys = list(dict.fromkeys(key for overrides in parsed for key in overrides))
    varying = {key for key in keys if len({overrides.get(key) for overrides in parsed}) > 1}
    common = [
        override for override in runs[0].overrides if _split_override(override)[0] not in varying
    ]
    labels = {
        run.name: " ".join(overrides[key] for key in keys if key in varying and key in overrides)
        or run.name
        for run, overrides in zip(runs, parsed, strict=True)
    }
    return common, labels


def _split_override(override: str) -> tuple[str, str]:
    """("loss", "loss=bce") for "loss=bce": the key without Hydra's +/~ prefixes, the override as typed."""
    return override.split("=", 1)[0].lstrip("+~"), override
