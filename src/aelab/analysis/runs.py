"""Runs read back from their directories: status, config, overrides, results and curves.

A run dir is any directory holding `.hydra/config.yaml`. Its state comes from metrics.json, which
aelab.runtime.train writes as {"status": "running", pid, host} once training starts, then replaces with
the results ("completed") or {"status": "failed", error}. A run with no metrics.json stopped before
training began; a "running" run whose process is gone was killed. Both are shown as crashed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from aelab.errors import AelabError

Curve = list[tuple[int, float]]  # (epoch, value), epochs counted from 0


@dataclass
class Run:
    name: str  # the path relative to the directory the runs were found in
    path: Path
    status: str  # completed, running or crashed
    detail: str  # why it is running or crashed, in words
    config: DictConfig
    overrides: list[str]
    metrics: dict = field(default_factory=dict)  # metrics.json of a completed run
    timing: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def find_runs(directory: Path) -> list[Run]:
    """Every run under directory (itself, a multirun's jobs, or sweeps further down), in job order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AelabError(
            f"{directory} is not a directory. Give a run dir (outputs/runs/<date>_<time>) or a multirun dir (outputs/multirun/<date>_<time>)."
        )
    paths = sorted(
        (config.parent.parent for config in directory.rglob(".hydra/config.yaml")),
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
    metrics = _read_json(path / "metrics.json")
    status, detail = run_status(metrics)
    overrides = (
        yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text())
        if (path / ".hydra" / "overrides.yaml").is_file()
        else []
    )
    return Run(
        name=name,
        path=path,
        status=status,
        detail=detail,
        config=OmegaConf.load(path / ".hydra" / "config.yaml"),
        overrides=[str(override) for override in overrides or []],
        metrics=metrics if status == "completed" else {},
        timing=_read_json(path / "timing.json") or {},
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_status(metrics: dict | None) -> tuple[str, str]:
    """(status, detail) from a run's metrics.json (None when it has none)."""
    if metrics is None:
        return "crashed", "no metrics.json: it stopped before training began"
    status = metrics.get("status")
    if status == "completed":
        return "completed", ""
    if status == "failed":
        return "crashed", f"failed: {metrics.get('error', 'no error recorded')}"
    if status == "running":
        pid, host = metrics.get("pid"), metrics.get("host")
        if host != socket.gethostname():
            return "running", f"running on {host} (pid {pid}); cannot check it from here"
        if pid is not None and process_alive(int(pid)):
            return "running", f"running (pid {pid})"
        return "crashed", f"stopped while training: process {pid} is gone (killed?)"
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
    """Per-epoch scalars by tag ("train/loss", "val/psnr", ...) from TensorBoard, else the CSV log."""
    events = path / "tensorboard"
    if any(events.glob("events.out.tfevents.*")):
        return _tensorboard_curves(events)
    if (path / "csv" / "metrics.csv").is_file():
        return _csv_curves(path / "csv" / "metrics.csv")
    return {}


def _tensorboard_curves(directory: Path) -> dict[str, Curve]:
    """Lightning logs an `epoch` scalar at every step it logs at: it maps steps to epochs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    events = EventAccumulator(
        str(directory), size_guidance={"scalars": 0}, purge_orphaned_data=False
    )
    events.Reload()
    tags = events.Tags()["scalars"]
    epoch_at = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    return {
        tag: [(epoch_at.get(e.step, index), e.value) for index, e in enumerate(events.Scalars(tag))]
        for tag in tags
        if tag != "epoch"
    }


def _csv_curves(path: Path) -> dict[str, Curve]:
    curves: dict[str, Curve] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if tag not in ("epoch", "step") and value not in ("", None):
                    curves.setdefault(tag, []).append((int(float(row["epoch"])), float(value)))
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
