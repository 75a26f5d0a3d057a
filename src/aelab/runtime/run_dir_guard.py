"""A Hydra callback that gives each run dir to one process: it claims the dir
(aelab.runtime.run_lock) before anything is written there, and refuses a dir that holds a run.

Hydra writes .hydra/ into the run dir before the run starts, so the claim must come earlier than
aelab.runtime.train: on_run_start (and on_multirun_start for a sweep dir) runs before that write.
A sweep's job dirs lie in its claimed sweep dir; each job also claims its own in on_job_start
(Hydra has written the job's .hydra/ by then), so that a resume of a running job is refused.
`python train.py resume=RUN_DIR` does not pass through here: it loads the run's saved config,
which registers no callbacks, and claims RUN_DIR itself (aelab.runtime.resume). A requeued SLURM
job continues its run (aelab.runtime.requeue) and takes over its earlier self's claim.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.errors import AelabError
from aelab.runtime.distributed import launch_rank
from aelab.runtime.requeue import continues_requeued_run
from aelab.runtime.run_lock import claim, release

RUN_MARKERS = (".hydra/config.yaml", "checkpoints", "metrics.json")


def holds_a_run(directory: Path) -> bool:
    return any((directory / marker).exists() for marker in RUN_MARKERS)


def refuse(directory: Path, what: str) -> None:
    raise AelabError(
        f"{directory} already holds {what}; a new run there would overwrite its config, logs "
        "and checkpoints. To continue that run: python train.py resume=RUN_DIR. To start a new "
        "one, choose another hydra.run.dir / hydra.sweep.dir, or leave it at its default (a new "
        "timestamped dir)."
    )


def refuse_a_run_in(run_dir: Path) -> None:
    if holds_a_run(run_dir):
        refuse(run_dir, "a run")


def refuse_runs_in(sweep_dir: Path) -> None:
    if sweep_dir.is_dir() and any(holds_a_run(job) for job in sweep_dir.iterdir()):
        refuse(sweep_dir, "the runs of another sweep")


def claim_or_exit(
    run_dir: Path, purpose: str, requeued: bool, refuse_if: Callable[[], None] | None = None
) -> None:
    """Claim run_dir for this process; exit 2 with the reason if it is another's."""
    try:
        if not requeued and refuse_if is not None:
            refuse_if()  # a used dir is refused before anything, even a lock file, is made there
        claim(run_dir, purpose, takeover=requeued, refuse_if=None if requeued else refuse_if)
        if requeued:
            from aelab.runtime.resume import usable_last_checkpoint  # loads torch

            usable_last_checkpoint(run_dir, required=False)
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)


class RefuseUsedRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launch_rank() == 0:  # srun's other ranks share rank 0's dir and its claim
            run_dir = Path(config.hydra.run.dir)
            requeued = continues_requeued_run(run_dir)
            claim_or_exit(run_dir, "run", requeued, refuse_if=lambda: refuse_a_run_in(run_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launch_rank() == 0:
            sweep_dir = Path(config.hydra.sweep.dir)
            claim_or_exit(sweep_dir, "sweep", False, refuse_if=lambda: refuse_runs_in(sweep_dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and launch_rank() == 0:
            job_dir = Path(config.hydra.runtime.output_dir)
            claim_or_exit(job_dir, "sweep job", continues_requeued_run(job_dir))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # the sweep's next job may run in this process
            release(Path(config.hydra.runtime.output_dir))
