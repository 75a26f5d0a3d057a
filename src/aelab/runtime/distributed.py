"""Which process of a multi-process run this is, and how Lightning's DDP children start.

For DDP on one node, Lightning starts the other ranks by running train.py again with the parent's
command line. Under Hydra that line can be a whole sweep (`-m loss=bce,mse`), and its run dir is
not the job's, so a child would start a sweep of its own or write a stray run dir. Instead the
parent exports its run dir (export_run_to_children) and aelab.runtime.cli hands each child the exact
config the parent's job saved there (child_arguments), as `resume=` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aelab.config.trusted import user_trusted

RUN_DIR_VARIABLE = "AELAB_DDP_RUN_DIR"
RESUME_VARIABLE = "AELAB_DDP_RESUME"
TRUST_VARIABLE = "AELAB_DDP_TRUSTED_MODULES"  # rank zero's trusted modules, for its children
# Set by whoever starts the ranks: Lightning's launcher, torchrun or SLURM's srun.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
# What Lightning's launcher sets in the parent's own environment.
LAUNCH_VARIABLES = (
    *("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS"),
)


def launch_rank() -> int:
    """This process's rank as its launcher set it (0 for a plain `python train.py`).

    Known before Lightning sets its own, so the run dir, status file and early data preparation
    are left to rank zero from the start.
    """
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:  # one task per job: SLURM starts no ranks
        variables = [v for v in RANK_VARIABLES if not v.startswith("SLURM")]
    else:
        variables = list(RANK_VARIABLES)
    return max((int(os.environ.get(v, "0") or 0) for v in variables), default=0)


def export_run_to_children(run_dir: Path, resume: bool, threads: int | None) -> None:
    """Tell the DDP children this process is about to start which run they belong to; with
    `threads` set, also their thread count (Lightning would set cores ÷ processes otherwise)."""
    os.environ[RUN_DIR_VARIABLE] = str(run_dir.absolute())  # spelled as rank zero spells it
    os.environ[RESUME_VARIABLE] = "1" if resume else ""
    os.environ[TRUST_VARIABLE] = ",".join(user_trusted())  # a saved config's are never read
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


@contextmanager
def launch_state_restored() -> Iterator[None]:
    """Undo, after a run, what Lightning's DDP launch leaves in this process: its environment
    variables and the process group.

    Left there, the next job of a sweep in the same process would find LOCAL_RANK set, take its
    processes to be started by someone else and start no children, or reuse the old process
    group, whose other ranks have exited; either way it would wait for them forever.
    """
    import torch  # here, not at the top: aelab.runtime.cli imports this module before parsing --help

    before = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def child_arguments(argv: list[str]) -> list[str]:
    """The Hydra command line of a rank other than zero: its parent's saved config and run dir,
    with the files only rank zero writes (.hydra/, train.log) left alone.

    A rank started by Lightning gets the config its parent's job saved; one started by srun has
    its own (identical) command line and only stops writing rank zero's files. Rank zero's
    command line is returned unchanged.
    """
    run_dir = os.environ.get(RUN_DIR_VARIABLE)
    local_rank = os.environ.get("LOCAL_RANK", "0")
    if not run_dir or local_rank == "0":
        rank = launch_rank()
        if rank == 0:
            return argv
        own = [a for a in argv if not a.startswith(("hydra.output_subdir=", "hydra.job.name="))]
        return [*own, "hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
    arguments = [
        f"--config-path={Path(run_dir) / '.hydra'}",
        "--config-name=config",
        f"hydra.run.dir='{run_dir}'",
        "hydra.output_subdir=null",
        f"hydra.job.name=train_rank{local_rank}",
        "hydra.job_logging.root.handlers=[file]",  # its own log file, no second copy on screen
    ]
    if os.environ.get(RESUME_VARIABLE):
        arguments.append(f"++resume='{run_dir}'")
    arguments.append(f"++trusted_modules=[{os.environ.get(TRUST_VARIABLE, '')}]")
    return arguments
