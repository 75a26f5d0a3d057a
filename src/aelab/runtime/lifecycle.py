"""What surrounds a run: threads, the status file, exit codes, the DDP hand-over, the heap.

train() and evaluate() read top to bottom; everything a process needs around them lives here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.callbacks import TrainingDiverged
from aelab.errors import AelabError
from aelab.runtime import created
from aelab.runtime.console import lightning_logs_through_root
from aelab.runtime.distributed import export_run_to_children, launch_rank, launch_state_restored
from aelab.runtime.heap import frozen_heap
from aelab.runtime.requeue import hand_over
from aelab.runtime.run_dir_guard import discard_refused_start
from aelab.runtime.stops import LISTENER, TrainingInterrupted, listening
from aelab.runtime.sweeps import sweep_continuation

log = logging.getLogger("aelab")


@contextmanager
def training_process(
    trainer: L.Trainer, output_dir: Path, resumes: bool, threads
) -> Iterator[None]:
    """Around fit and test: DDP children told their run, Lightning's launch state undone after
    (a sweep's next job starts clean), and the long-lived heap out of the collector's reach."""
    with launch_state_restored(), frozen_heap():
        if trainer.world_size > 1:
            check_ranks_can_start(trainer)
            export_run_to_children(output_dir, resumes, threads)
        yield


def check_ranks_can_start(trainer: L.Trainer) -> None:
    """Lightning starts a node's other DDP ranks by running this process's script again, which
    works for `python train.py` only: not from a joblib worker or a submitit job."""
    import __main__

    if trainer.strategy.cluster_environment.creates_processes_externally:
        return  # srun or torchrun started every rank already
    if getattr(__main__, "__spec__", None) is not None or not sys.argv[0].endswith(".py"):
        raise AelabError(
            f"This run asks for {trainer.world_size} DDP processes, and Lightning would start the "
            "others by running this process's command again, but this process is not "
            "`python train.py` (it is a joblib or submitit worker, or another program). Run DDP "
            "jobs with the default (basic) launcher, which runs a sweep's jobs one after "
            "another, or on SLURM let srun start one task per device "
            "(hydra/launcher=slurm hydra.launcher.tasks_per_node=N)."
        )


def write_status(output_dir: Path, status: str, **facts) -> None:
    """metrics.json before the results exist, so a report can tell a running run from a dead one.
    A run with a status is a result: a later refusal never discards its dir (aelab.runtime.created)."""
    created.keep(output_dir)
    (output_dir / "metrics.json").write_text(
        json.dumps({"status": status, **facts}, indent=2) + "\n"
    )


def threads_per_job(requested: int | None, parallel_jobs: int, cores: int) -> int:
    """Torch threads for one job: as asked, else this machine's cores shared by the parallel jobs.

    joblib's n_jobs = -1 means one job per core (-2 all but one, ...), so jobs × threads never
    exceeds the cores.
    """
    if requested is not None:
        if not (isinstance(requested, int) and requested > 0):
            raise AelabError(
                f"threads must be a positive integer or null (all cores), got {requested!r}."
            )
        return requested
    jobs = parallel_jobs if parallel_jobs > 0 else max(cores + 1 + parallel_jobs, 1)
    return max(1, cores // jobs)


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once: the launcher's n_jobs (joblib), else 1."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    return int(HydraConfig.get().launcher.get("n_jobs") or 1)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def guarded(
    job: Callable[[DictConfig, Path], float | None], cfg: DictConfig, resumable: bool = False
) -> float | None:
    """Run `job` (train or evaluate) in the run dir, with torch threads set for this job; a
    user's mistake is explained and exits 2; a stop signal in any phase leaves an interrupted run
    and exits 128 + its number (with the command that continues it, for a `resumable` job); a
    refused resume leaves the run's status as it was."""
    with listening():
        return guarded_job(job, cfg, resumable)


def guarded_job(job, cfg: DictConfig, resumable: bool) -> float | None:
    output_dir = Path(cfg.paths.output_dir)
    lightning_logs_through_root()  # each of Lightning's lines once on screen, once in train.log
    status_before = read_status_file(output_dir) if cfg.get("resume") else None
    try:
        LISTENER.act()  # a signal that came while the job was being set up stops it here
        torch.set_num_threads(
            threads_per_job(cfg.get("threads"), parallel_jobs(), available_cores())
        )
        log.info("Torch threads: %d", torch.get_num_threads())
        return job(cfg, output_dir)
    except (TrainingInterrupted, TrainingDiverged, AelabError) as error:
        if launch_rank() != 0:  # rank zero reports it and owns the run dir
            log.error("%s", error)
            # All ranks stop together on a signal or divergence; a non-zero exit here would make
            # Lightning kill rank zero before it has written the run's status.
            sys.exit(0 if isinstance(error, TrainingInterrupted | TrainingDiverged) else 2)
        if isinstance(error, TrainingInterrupted):
            report_interruption(output_dir, error, resumable)
            hand_over(error.signum, LISTENER.previous_handler(error.signum))
            sys.exit(128 + error.signum)
        if status_before is not None and isinstance(error, AelabError):
            (output_dir / "metrics.json").write_text(status_before)  # still resumable
            print(f"\naelab: {error}\n", file=sys.stderr)
            sys.exit(2)
        if not created.is_kept(output_dir):  # refused before the run started
            discard_refused_start(output_dir)
        else:
            status = "diverged" if isinstance(error, TrainingDiverged) else "failed"
            write_status(output_dir, status, error=str(error))
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)
    except BaseException as error:
        if launch_rank() == 0 and output_dir.is_dir():
            write_status(output_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise


def read_status_file(output_dir: Path) -> str | None:
    try:
        return (output_dir / "metrics.json").read_text()
    except OSError:
        return None


def report_interruption(output_dir: Path, stop: TrainingInterrupted, resumable: bool) -> None:
    """metrics.json says "interrupted" and how to continue; stderr says the same."""
    if not resumable:
        write_status(output_dir, "interrupted", error=str(stop))
        print(f"\naelab: {stop}. Nothing was kept; run the same command again.\n", file=sys.stderr)
        return
    resume = f"python train.py resume={output_dir}"
    sweep = sweep_continuation(output_dir)
    facts = {"resume": resume, **({"resume_sweep": sweep} if sweep else {})}
    write_status(output_dir, "interrupted", error=str(stop), **facts)
    if sweep:
        advice = f"Continue the sweep (this job, then those not run yet) with: {sweep}"
    else:
        advice = f"Continue with: {resume}"
    print(f"\naelab: {stop}. {advice}\n", file=sys.stderr)
