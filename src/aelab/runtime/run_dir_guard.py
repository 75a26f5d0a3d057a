"""A Hydra callback that gives each run dir to one process: it claims the dir
(aelab.runtime.run_lock) before anything is written there, and refuses a dir that a run there
would overwrite or append to.

Hydra writes .hydra/ and the log into the run dir before the run starts, so the claim must come
earlier than aelab.runtime.train: on_run_start (and on_multirun_start for a sweep dir) runs before
that write, and records what Hydra is about to create (aelab.runtime.created), so that a refused
start removes exactly that. A sweep's job dirs lie in its claimed sweep dir; each job also claims
its own in on_job_start (Hydra has written the job's .hydra/ by then), so that a resume of a
running job is refused. `python train.py resume=RUN_DIR` does not pass through here: it loads the
run's saved config, which registers no callbacks, and claims RUN_DIR itself
(aelab.runtime.resume). A requeued SLURM job continues its run (aelab.runtime.requeue).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.errors import AelabError
from aelab.runtime import created
from aelab.runtime.distributed import launch_rank
from aelab.runtime.requeue import continues_requeued_run
from aelab.runtime.run_lock import claim, release

# What a run (or an eval) writes at the top of its dir, besides Hydra's log: a new run would
# overwrite these, or (Lightning's CSVLogger) delete the metrics.csv it finds.
RUN_FILES = (".hydra", "checkpoints", "metrics.json", "timing.json", "preview.png", "eval.json")
RUN_FILES += ("data.json", "data-files.json.gz", "sweep.json")  # the run's data, a sweep's jobs
RUN_FILES += ("history.jsonl", "mlflow.json")  # its per-epoch numbers, its MLflow run
LOGGER_DIRS = ("tensorboard", "csv")  # configs/logger: each logger's save dir


def run_file_in(directory: Path, log_name: str) -> str | None:
    """The first file in directory that a new run there would overwrite or append to."""
    names = (*RUN_FILES, *LOGGER_DIRS, log_name)
    return next((n for n in names if os.path.lexists(directory / n)), None)


def refuse(directory: Path, what: str) -> None:
    raise AelabError(
        f"{directory} already holds {what}; a new run there would overwrite or append to it. "
        "To continue a run: python train.py resume=RUN_DIR. To start a new one, choose another "
        "hydra.run.dir / hydra.sweep.dir, or leave it at its default (a new timestamped dir)."
    )


def refuse_a_run_in(run_dir: Path, log_name: str) -> None:
    if name := run_file_in(run_dir, log_name):
        refuse(run_dir, f"a run's files ({name})")


def refuse_runs_in(sweep_dir: Path, log_name: str) -> None:
    if (sweep_dir / "multirun.yaml").exists():
        refuse(sweep_dir, "another sweep's files (multirun.yaml)")
    for job in (p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else ():
        if name := run_file_in(job, log_name):
            refuse(sweep_dir, f"the runs of another sweep ({job.name}/{name})")


def discard_refused_start(run_dir: Path) -> None:
    """Undo a refused start: what this process made for it in run_dir and, for a sweep's job, in
    the sweep dir (kept where a job of the sweep has ended)."""
    config = HydraConfig.get() if HydraConfig.initialized() else None
    sweep_dir = config.sweep.dir if config and config.mode == RunMode.MULTIRUN else None
    created.discard(run_dir, sweep_dir and Path(sweep_dir))


def claim_or_exit(
    run_dir: Path, purpose: str, requeued: bool, refuse_if: Callable[[], None] | None = None
) -> None:
    """Claim run_dir for this process; exit 2 with the reason if it is another's or unusable."""
    try:
        if not requeued and refuse_if is not None:
            refuse_if()  # a used dir is refused before anything, even a lock file, is made there
        claim(run_dir, purpose, refuse_if=None if requeued else refuse_if)
        if requeued:
            from aelab.runtime.resume import usable_last_checkpoint  # loads torch

            usable_last_checkpoint(run_dir, required=False)
    except AelabError as error:
        discard_refused_start(run_dir)
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)


class RefuseUsedRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launch_rank() == 0:  # srun's other ranks share rank 0's dir and its claim
            run_dir, log_name = Path(config.hydra.run.dir), f"{config.hydra.job.name}.log"
            requeued = continues_requeued_run(run_dir)
            claim_or_exit(run_dir, "run", requeued, partial(refuse_a_run_in, run_dir, log_name))
            created.expect(run_dir / log_name)  # what Hydra writes next, for this process
            if config.hydra.output_subdir is not None:
                created.expect(run_dir / config.hydra.output_subdir, "tree")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launch_rank() == 0:
            sweep_dir, log_name = Path(config.hydra.sweep.dir), f"{config.hydra.job.name}.log"
            claim_or_exit(sweep_dir, "sweep", False, partial(refuse_runs_in, sweep_dir, log_name))
            created.expect(sweep_dir / "multirun.yaml")
            created.expect_entries(sweep_dir)  # the job dirs Hydra makes are this sweep's

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and launch_rank() == 0:
            job_dir = Path(config.hydra.runtime.output_dir)
            claim_or_exit(job_dir, "sweep job", continues_requeued_run(job_dir))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # the sweep's next job may run in this process
            job_dir = Path(config.hydra.runtime.output_dir)
            release(job_dir)
            created.keep(job_dir)  # an ended job is a result, whatever the sweep does next
