"""A sweep's jobs, listed when it starts, so that a stop between or inside them loses none.

RecordSweepJobs (a Hydra callback) writes SWEEP_DIR/sweep.json before the first job runs: every
job's overrides, in the sweeper's order, and the Hydra overrides a job needs when run on its own.
sweep_jobs reads it back with each job's state, and `python train.py resume=SWEEP_DIR`
(continue_sweep) runs what is left one job after another: an interrupted or killed job is resumed
from its last.ckpt, a job not run yet runs in SWEEP_DIR/<job number>, completed ones are kept.
Only Hydra's basic sweeper knows its jobs in advance; an Optuna search continues by running its
command again (its study resumes).
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.errors import AelabError
from aelab.runtime import created
from aelab.runtime.stops import stop_signals

log = logging.getLogger(__name__)

MANIFEST = "sweep.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Hydra settings of the sweep itself, which a job run on its own does not take.
SWEEP_ONLY = ("hydra.sweep", "hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper")
SWEEP_ONLY += ("hydra.mode", "hydra.run")


@dataclass(frozen=True)
class SweepJob:
    number: int
    overrides: tuple[str, ...]
    run_dir: Path | None  # None: the job has not started
    status: str | None  # its metrics.json status; "not run" without a dir, None without the file


class RecordSweepJobs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = listed_jobs(config)
        except Exception as error:  # a sweep Hydra runs but this listing cannot parse
            log.warning("The sweep's jobs could not be listed in %s: %s", MANIFEST, error)
            return
        parser = OverridesParser.create()
        hydra_overrides = [
            override.input_line
            for override in parser.parse_overrides(list(config.hydra.overrides.hydra))
            if not override.key_or_group.startswith(SWEEP_ONLY)
        ]
        manifest = {
            "jobs": [{"job": number, "overrides": job} for number, job in enumerate(jobs)],
            "hydra_overrides": hydra_overrides,
        }
        created.expect(sweep_dir / MANIFEST)  # a refused sweep takes it away with the rest
        (sweep_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def listed_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides in the order Hydra's basic sweeper runs them: the product of the
    sweeper's params and the command line's, one key each, the last key varying fastest."""
    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()]
    lines += list(config.hydra.overrides.task)
    choices: dict[str, list[str]] = {}  # a later override of a key replaces an earlier one
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ValueError(f"{override.input_line} is not a list of values")
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def is_sweep_dir(directory: Path) -> bool:
    return (directory / MANIFEST).is_file() or (directory / "multirun.yaml").is_file()


def sweep_jobs(sweep_dir: str | Path) -> list[SweepJob]:
    """The sweep's jobs in order with their run dirs (found by their .hydra/overrides.yaml, so
    any hydra.sweep.subdir works) and states; "not run" for a job that never started."""
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    run_dirs = {}
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        run_dirs.setdefault(job_overrides(overrides_file), overrides_file.parent.parent)
    jobs = []
    for entry in manifest["jobs"]:
        overrides = tuple(entry["overrides"])
        run_dir = run_dirs.pop(overrides, None)
        jobs.append(SweepJob(entry["job"], overrides, run_dir, _status(run_dir)))
    return jobs


def read_manifest(sweep_dir: Path) -> dict:
    """SWEEP_DIR/sweep.json as RecordSweepJobs wrote it; AelabError when it is not (edited,
    truncated), before any job runs."""
    try:
        manifest = json.loads((sweep_dir / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        problem = f"has no readable {MANIFEST} ({error})"
    else:
        jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
        entries_ok = isinstance(jobs, list) and all(
            isinstance(job, dict)
            and isinstance(job.get("job"), int)
            and isinstance(job.get("overrides"), list)
            and all(isinstance(line, str) for line in job["overrides"])
            for job in jobs
        )
        if entries_ok and isinstance(manifest.get("hydra_overrides", []), list):
            return manifest
        problem = f"has a {MANIFEST} that is not the list of jobs aelab writes (was it edited?)"
    raise AelabError(
        f"{sweep_dir} {problem}: {MANIFEST} is the list of its jobs that a sweep writes when it "
        "starts. An Optuna search continues when its command runs again; a single run continues "
        "with python train.py resume=RUN_DIR."
    )


def job_overrides(overrides_file: Path) -> tuple[str, ...]:
    """A job dir's overrides, which tell which listed job it is; AelabError naming the file when
    it is not Hydra's list of them (edited, truncated)."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):
        overrides = None  # unreadable: named below, as one that is no list
    if not isinstance(overrides, list) or not all(isinstance(line, str) for line in overrides):
        raise AelabError(
            f"{overrides_file} is not the list of overrides Hydra writes for a job, so which of "
            "its sweep's jobs that dir holds is not known. Restore the file, or move that job's dir "
            "out of the sweep."
        )
    return tuple(overrides)


def jobs_not_run(directory: str | Path) -> list[tuple[Path, SweepJob]]:
    """Every listed sweep under directory (itself included) with each of its jobs that never
    started: what a report shows as "not run", besides the run dirs it finds."""
    manifests = sorted(Path(directory).rglob(MANIFEST))
    return [
        (manifest.parent, job)
        for manifest in manifests
        for job in sweep_jobs(manifest.parent)
        if job.run_dir is None
    ]


def _status(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return "not run"
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def sweep_continuation(job_dir: Path) -> str | None:
    """The command that continues the sweep this job belongs to, if it is a listed sweep's."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(HydraConfig.get().sweep.dir).absolute()
    return f"python train.py resume={sweep_dir}" if (sweep_dir / MANIFEST).is_file() else None


def continue_sweep(sweep_dir: Path, script: str, trust_argument: str) -> int:
    """`python train.py resume=SWEEP_DIR`: every job not completed, one after another, each as
    its own `python train.py` process (a resumed one with this command line's `trust_argument`);
    a stop signal is passed on to the job and ends the continuation. Failed and diverged jobs are left as they
    are. Returns the exit status."""
    jobs = sweep_jobs(sweep_dir)
    hydra_overrides = read_manifest(sweep_dir).get("hydra_overrides", [])
    left_alone = []
    for job in jobs:
        if job.status == "completed":
            continue
        if job.status in ("failed", "diverged"):
            left_alone.append(job)
            continue
        if job.run_dir is None:
            arguments = [
                *job.overrides,
                *hydra_overrides,
                f"hydra.run.dir={sweep_dir / str(job.number)}",
            ]
        else:
            arguments = [f"resume={job.run_dir}", trust_argument]
        print(f"aelab: sweep job {job.number} ({' '.join(job.overrides)})", file=sys.stderr)
        code = run_forwarding_signals([sys.executable, script, *arguments])
        code = 128 - code if code < 0 else code  # killed by a signal before it could answer
        if code != 0:
            if code > 128:
                print(
                    f"\naelab: the sweep stopped; continue it with: python train.py "
                    f"resume={sweep_dir}\n",
                    file=sys.stderr,
                )
            return code
    for job in left_alone:
        print(
            f"aelab: sweep job {job.number} ({' '.join(job.overrides)}) {job.status}; it is left "
            f"as it was (see {job.run_dir}/metrics.json).",
            file=sys.stderr,
        )
    return 2 if left_alone else 0


def run_forwarding_signals(command: list[str]) -> int:
    """Run command; a stop signal this process gets is passed on to it (the job saves and stops)."""
    process = subprocess.Popen(command)
    names = stop_signals()
    previous = {
        name: signal.signal(signal.Signals[name], lambda number, _: process.send_signal(number))
        for name in names
    }
    try:
        return process.wait()
    finally:
        for name, handler in previous.items():
            signal.signal(signal.Signals[name], handler)
