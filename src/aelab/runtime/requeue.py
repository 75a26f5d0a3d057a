"""A SLURM job requeued after a stop continues its run from last.ckpt, the way `resume=` does.

One mechanism for every stop (aelab.runtime.stops): SaveOnSignal saves last.ckpt when the signal comes (SIGUSR1 from
`sbatch --signal=USR1@120`, SIGUSR2 from submitit, SIGTERM on preemption), then hand_over lets
the job be requeued: submitit's own handler requeues a sweep's job, `scontrol requeue` a plain
sbatch job. SLURM starts the requeued job with the same command line (or submitit with the same
pickled job) and the same run dir, and sets SLURM_RESTART_COUNT; train.py then continues the run
in that dir instead of refusing it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def continues_requeued_run(run_dir: Path) -> bool:
    """True in a requeued SLURM job whose run dir holds a run that has not completed: the guard
    lets it start there, and train.py continues from last.ckpt if the run got as far as one."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return False
    metrics = run_dir / "metrics.json"
    try:
        return json.loads(metrics.read_text()).get("status") != "completed"
    except (OSError, ValueError):  # none yet, or rank zero is rewriting it right now
        return True


def hand_over(signum: int, previous) -> None:
    """After last.ckpt is saved: have the job requeued, if a scheduler asked for the stop.

    `previous`, the handler that was there before aelab's (submitit's requeue), is called; it
    may exit. A plain sbatch job that got SIGUSR1 is requeued with scontrol, as Lightning's SLURM
    support does.
    """
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)
    elif signum == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ and shutil.which("scontrol"):
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        if "SLURM_ARRAY_TASK_ID" in os.environ:
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        log.info(
            "scontrol requeue %s: %s", job, result.stdout or result.stderr or result.returncode
        )
